#!/usr/bin/env bash
# Builds the browser package: the crate for wasm32 (profile release-wasm: opt-level z, LTO), the
# JavaScript bindings (wasm-bindgen --target web), then binaryen's wasm-opt -Oz.
# Installs what is missing first: the rustup target, wasm-bindgen-cli at the version of the
# wasm-bindgen crate in Cargo.lock, and the npm packages (binaryen, playwright-core).
# Then the npm package in web/pkg (package.json with exports/types/files, the typed API
# js/deepml.js and js/deepml.d.ts, README) and its tarball web/deepml-<version>.tgz (npm pack).
# Prints the gzipped size of the .wasm; fails above 250 KB.
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
if [ ! -x node_modules/.bin/wasm-opt ] || [ ! -d node_modules/playwright-core ] || [ ! -x node_modules/.bin/tsc ] || [ ! -d node_modules/@webgpu/types ]; then
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
# The bindings are the package's core (deepml_core.js); the typed API over them is js/deepml.js
# with its hand-written types js/deepml.d.ts.
wasm-bindgen --target web --no-typescript --out-dir "$TMP" --out-name deepml_core "$WASM"

echo "== wasm-opt -Oz (binaryen $(node_modules/.bin/wasm-opt --version | awk '{print $3}'))"
node_modules/.bin/wasm-opt -Oz \
  --enable-bulk-memory --enable-mutable-globals --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-reference-types --enable-multivalue \
  "$TMP/deepml_core_bg.wasm" -o "$TMP/deepml_core_bg.opt.wasm"
mv "$TMP/deepml_core_bg.opt.wasm" "$TMP/deepml_core_bg.wasm"

# --- the npm package: name, version (the crate's), exports, types, files, sideEffects
cp js/deepml.js js/deepml.d.ts "$TMP/"
cp README.md "$TMP/README.md"
VERSION=$(awk -F'"' '/^version = / { print $2; exit }' "$ROOT/Cargo.toml")
WEBGPU_TYPES=$(node -p 'require("./package.json").devDependencies["@webgpu/types"]')
cat > "$TMP/package.json" <<JSON
{
  "name": "deepml",
  "version": "$VERSION",
  "description": "Computer-vision loss functions and their gradients as WebGPU compute shaders (WebAssembly build of the deepml crate)",
  "license": "MIT OR Apache-2.0",
  "type": "module",
  "main": "./deepml.js",
  "module": "./deepml.js",
  "types": "./deepml.d.ts",
  "exports": {
    ".": {
      "types": "./deepml.d.ts",
      "import": "./deepml.js",
      "default": "./deepml.js"
    },
    "./deepml_core_bg.wasm": "./deepml_core_bg.wasm",
    "./package.json": "./package.json"
  },
  "files": [
    "deepml.js",
    "deepml.d.ts",
    "deepml_core.js",
    "deepml_core_bg.wasm",
    "README.md"
  ],
  "sideEffects": false,
  "dependencies": {
    "@webgpu/types": "$WEBGPU_TYPES"
  },
  "keywords": ["webgpu", "wasm", "loss", "gradient", "segmentation", "computer-vision"]
}
JSON
rm -rf pkg
mv "$TMP" pkg
rm -f deepml-*.tgz
(cd pkg && npm pack --silent --pack-destination .. >/dev/null)
TARBALL=$(ls deepml-*.tgz)

RAW=$(wc -c < pkg/deepml_core_bg.wasm)
GZ=$(gzip -9 -c pkg/deepml_core_bg.wasm | wc -c)
echo "wasm: $RAW bytes, $GZ bytes gzipped (limit 256000)"
if [ "$GZ" -gt 256000 ]; then
  echo "build.sh: the gzipped wasm is over 250 KB" >&2
  exit 1
fi
echo "built $WEB/pkg and $WEB/$TARBALL; serve $WEB with: node $WEB/server.mjs"
