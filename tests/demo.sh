#!/usr/bin/env bash
# The main job: every loss on the best adapter found (installs Rust and a software GPU first
# where they are missing, like the test suite).
set -euo pipefail
cd "$(dirname "$0")/.."
DEEPML_SETUP_CHROMIUM=0 DEEPML_SETUP_MPI=0 bash tests/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/deepml-xdg-$(id -u)}"
mkdir -p -m 700 "$XDG_RUNTIME_DIR"
cargo run --release -q --features cli -- demo "$@"
