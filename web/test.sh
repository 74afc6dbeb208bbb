#!/usr/bin/env bash
# The browser test: installs Chromium (Debian's, apt-get) and the npm packages if missing,
# builds the wasm package (web/build.sh), then runs web/test.mjs in headless Chromium with
# WebGPU on SwiftShader. Ends with "N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/lib/chromium/chromium ] && [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "== installing nodejs and npm"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm
fi
bash build.sh
DEEPML_WEB_STRICT=${DEEPML_WEB_STRICT:-1} node test.mjs
