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
# With `burn`: every module and target (Burn is checked once here, built once below).
cargo clippy --release --all-targets --features burn -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps -q --features burn

echo "== a dependent with the default features: what it pulls, and that it builds"
# Only wgpu, bytemuck, half, parking_lot, futures-channel and pollster: no clap, serde or naga
# back ends (those are the tests' and the tool's). Checked, not built: no second wgpu codegen.
dep=$(mktemp -d)
mkdir -p "$dep/src"
printf '[package]\nname = "dependent"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\ndeepml = { path = "%s" }\n' "$PWD" > "$dep/Cargo.toml"
echo 'fn main() { let _ = deepml::JaccardLoss::binary(); }' > "$dep/src/main.rs"
cp Cargo.lock "$dep/"
tree=$(cd "$dep" && cargo tree -e normal -p deepml --depth 1)
echo "$tree"
direct=$(echo "$tree" | sed -n 's/^.*── \([a-z0-9_-]*\) v.*$/\1/p' | sort | tr '\n' ' ')
if [ "$direct" != "bytemuck futures-channel half parking_lot pollster wgpu " ]; then
  echo "a dependent with the default features pulls: $direct"
  exit 1
fi
(cd "$dep" && CARGO_TARGET_DIR="$dep/target" cargo check -q)
rm -rf "$dep"

echo "== build"
# One build for everything: the tests' dev-dependencies (naga's extra back ends, the `cli`
# feature) shape the features, so the tool is run from this build, not through `cargo run`
# (which would resolve without them and build wgpu a second time).
cargo build --release --all-targets
DEEPML="${CARGO_TARGET_DIR:-target}/release/deepml"

for backend in vulkan gl; do
  echo "== tests on $backend (llvmpipe)"
  # On Vulkan, the whole suite with the `burn` feature (tests/burn.rs among it; Burn is built
  # here, once, with the features the example below uses too). The portability test translates
  # every shader with naga alone (no adapter): once is enough.
  args=(--features burn)
  [ "$backend" = vulkan ] || args=(-- --skip every_shader_translates_to_every_backend)
  WGPU_BACKEND=$backend DEEPML_EXPECT_BACKEND=$backend DEEPML_EXPECT_ADAPTER=llvmpipe cargo test --release "${args[@]}"
  echo "== conformance on $backend"
  "$DEEPML" --backend "$backend" check -q
done

# A third implementation: SwiftShader's Vulkan driver, which Debian's Chromium ships.
icd=$(dpkg -L chromium-common | grep '/vk_swiftshader_icd\.json$' | head -1)
echo "== tests on SwiftShader (Vulkan, $icd)"
VK_ICD_FILENAMES=$icd WGPU_BACKEND=vulkan DEEPML_EXPECT_BACKEND=vulkan DEEPML_EXPECT_ADAPTER=swiftshader \
  cargo test --release -- --skip every_shader_translates_to_every_backend
echo "== conformance on SwiftShader"
VK_ICD_FILENAMES=$icd "$DEEPML" --backend vulkan --adapter swiftshader check -q

echo "== tests under the Khronos validation layer (lavapipe, synchronization validation on)"
bash tests/validation.sh

echo "== examples (short step counts; each asserts its own result)"
cargo run --release -q --example quickstart
cargo run --release -q --example train_segmentation -- --steps 150 --print 50
cargo run --release -q --example train_arcface -- --steps 60 --print 20
cargo run --release -q --example combined_loss -- --steps 60

echo "== scale-out: examples/data_parallel on 4 MPI ranks (lavapipe, one core each)"
# Every rank checks its value and gradients against the whole batch on one device.
LP_NUM_THREADS=1 WGPU_BACKEND=vulkan mpiexec -n 4 "${CARGO_TARGET_DIR:-target}/release/examples/data_parallel"

echo "== burn: examples/burn_segmentation on lavapipe (built by the Vulkan test pass)"
WGPU_BACKEND=vulkan cargo run --release -q --features burn --example burn_segmentation

echo "== browser (wasm build, headless Chromium, WebGPU on SwiftShader)"
DEEPML_BIN="$(cd "$(dirname "$DEEPML")" && pwd)/deepml" bash web/test.sh
