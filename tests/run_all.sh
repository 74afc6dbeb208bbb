#!/usr/bin/env bash
# The whole test suite: every test on Vulkan (lavapipe), again on GL (llvmpipe), the conformance
# check on both, and the examples with short step counts. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/deepml-xdg-$(id -u)}"
mkdir -p -m 700 "$XDG_RUNTIME_DIR"
export RUST_BACKTRACE=1

echo "== build"
cargo build --release --all-targets

for backend in vulkan gl; do
  echo "== tests on $backend"
  WGPU_BACKEND=$backend DEEPML_EXPECT_BACKEND=$backend cargo test --release
  echo "== conformance on $backend"
  cargo run --release -q -- --backend "$backend" check -q
done

echo "== examples (short step counts; each asserts its own result)"
cargo run --release -q --example quickstart
cargo run --release -q --example train_segmentation -- --steps 150 --print 50
cargo run --release -q --example train_arcface -- --steps 60 --print 20
cargo run --release -q --example combined_loss -- --steps 60

echo "== browser (wasm build, headless Chromium, WebGPU on SwiftShader)"
bash web/test.sh
