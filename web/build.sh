#!/usr/bin/env bash
# Builds the browser package: the crate for wasm32 (profile release-wasm: opt-level z, LTO), the
# JavaScript bindings (wasm-bindgen --target web, into web/pkg), then binaryen's wasm-opt -Oz.
# Installs what is missing first: the rustup target, wasm-bindgen-cli at the version of the
# wasm-bindgen crate in Cargo.lock, and the npm packages (binaryen, playwright-core).
# Prints the gzipped size of the .wasm; fails above 400 KB.
set -euo pipefail
cd "$(dirname "$0")"
WEB=$PWD
ROOT=$(cd .. && pwd)
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

# --- tools
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
WBG_VERSION=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/"/, "", $3); print $3; exit }' "$ROOT/Cargo.lock")
if [ -z "$WBG_VERSION" ]; then
  echo "build.sh: no wasm-bindgen in Cargo.lock" >&2
  exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WBG_VERSION" ]; then
  echo "== installing wasm-bindgen-cli $WBG_VERSION (about 12 minutes on 2 cores)"
  cargo install wasm-bindgen-cli --version "$WBG_VERSION"
fi
if [ ! -x node_modules/.bin/wasm-opt ] || [ ! -d node_modules/playwright-core ]; then
  echo "== npm ci"
  npm ci --no-audit --no-fund
fi

# --- build
echo "== cargo build (wasm32, release-wasm)"
(cd "$ROOT" && cargo rustc --lib --crate-type cdylib --target wasm32-unknown-unknown --profile release-wasm --features web)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WASM="$TARGET_DIR/wasm32-unknown-unknown/release-wasm/deepml.wasm"

echo "== wasm-bindgen"
TMP="$TARGET_DIR/wasm-pkg.tmp.$$"
rm -rf "$TMP"
wasm-bindgen --target web --out-dir "$TMP" --out-name deepml "$WASM"

echo "== wasm-opt -Oz (binaryen $(node_modules/.bin/wasm-opt --version | awk '{print $3}'))"
node_modules/.bin/wasm-opt -Oz \
  --enable-bulk-memory --enable-mutable-globals --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-reference-types --enable-multivalue \
  "$TMP/deepml_bg.wasm" -o "$TMP/deepml_bg.opt.wasm"
mv "$TMP/deepml_bg.opt.wasm" "$TMP/deepml_bg.wasm"
rm -rf pkg
mv "$TMP" pkg

RAW=$(wc -c < pkg/deepml_bg.wasm)
GZ=$(gzip -9 -c pkg/deepml_bg.wasm | wc -c)
echo "wasm: $RAW bytes, $GZ bytes gzipped (limit 409600)"
if [ "$GZ" -gt 409600 ]; then
  echo "build.sh: the gzipped wasm is over 400 KB" >&2
  exit 1
fi
echo "built $WEB/pkg; serve $WEB with: node $WEB/server.mjs"
