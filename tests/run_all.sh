#!/usr/bin/env bash
# The whole test suite: every test on Vulkan (lavapipe), again on GL (llvmpipe), again on
# SwiftShader's Vulkan, the conformance check on all three, the suite once more under the Khronos
# validation layer, the examples with short step counts, and the browser test. Installs what is
# missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/deepml-xdg-$(id -u)}"
mkdir -p -m 700 "$XDG_RUNTIME_DIR"
export RUST_BACKTRACE=1

echo "== lint: rustfmt, clippy (warnings denied), rustdoc (warnings denied)"
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps -q

echo "== build"
# One build for everything: the tests' dev-dependencies (naga's extra back ends, the `cli`
# feature) shape the features, so the tool is run from this build, not through `cargo run`
# (which would resolve without them and build wgpu a second time).
cargo build --release --all-targets
DEEPML="${CARGO_TARGET_DIR:-target}/release/deepml"

for backend in vulkan gl; do
  echo "== tests on $backend (llvmpipe)"
  WGPU_BACKEND=$backend DEEPML_EXPECT_BACKEND=$backend DEEPML_EXPECT_ADAPTER=llvmpipe cargo test --release
  echo "== conformance on $backend"
  "$DEEPML" --backend "$backend" check -q
done

# A third implementation: SwiftShader's Vulkan driver, which Debian's Chromium ships.
icd=$(dpkg -L chromium-common | grep '/vk_swiftshader_icd\.json$' | head -1)
echo "== tests on SwiftShader (Vulkan, $icd)"
VK_ICD_FILENAMES=$icd WGPU_BACKEND=vulkan DEEPML_EXPECT_BACKEND=vulkan DEEPML_EXPECT_ADAPTER=swiftshader \
  cargo test --release
echo "== conformance on SwiftShader"
VK_ICD_FILENAMES=$icd "$DEEPML" --backend vulkan --adapter swiftshader check -q

echo "== tests under the Khronos validation layer (lavapipe, synchronization validation on)"
bash tests/validation.sh

echo "== examples (short step counts; each asserts its own result)"
cargo run --release -q --example quickstart
cargo run --release -q --example train_segmentation -- --steps 150 --print 50
cargo run --release -q --example train_arcface -- --steps 60 --print 20
cargo run --release -q --example combined_loss -- --steps 60

echo "== browser (wasm build, headless Chromium, WebGPU on SwiftShader)"
DEEPML_BIN="$(cd "$(dirname "$DEEPML")" && pwd)/deepml" bash web/test.sh
