#!/usr/bin/env bash
# Installs what deepml's demo and tests need on a fresh Debian machine, skipping what is there:
# a Rust toolchain, a software GPU (Mesa's lavapipe for Vulkan, llvmpipe through EGL for GL), MPICH
# with libclang (the scale-out example), and
# Debian's Chromium (SwiftShader's Vulkan, the validation layer, the browser test's browser;
# DEEPML_SETUP_CHROMIUM=0 skips it, as tests/demo.sh does).
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -q; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "$@"
}

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  apt_install curl ca-certificates build-essential
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi

missing=()
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
ldconfig -p | grep -q 'libEGL.so.1' || missing+=(libegl1)
ls /usr/lib/*/libEGL_mesa.so.0 >/dev/null 2>&1 || missing+=(libegl-mesa0)
ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1 || missing+=(libgl1-mesa-dri)
# Debian's Chromium: the browser test's browser, and (in chromium-common) SwiftShader's Vulkan
# driver and the Khronos validation layer that tests/run_all.sh also runs the suite on.
if [ "${DEEPML_SETUP_CHROMIUM:-1}" = 1 ] && ! dpkg -L chromium-common 2>/dev/null | grep -q '/vk_swiftshader_icd\.json$'; then
  missing+=(chromium)
fi
# MPI for the scale-out example (feature `mpi`: rsmpi over MPICH; its bindings need libclang).
# DEEPML_SETUP_MPI=0 skips it, as tests/demo.sh does.
if [ "${DEEPML_SETUP_MPI:-1}" = 1 ]; then
  command -v mpiexec >/dev/null 2>&1 || missing+=(mpich)
  dpkg -s libmpich-dev >/dev/null 2>&1 || missing+=(libmpich-dev)
  # bindgen's libclang (libclang.so*, libclang-N.so*), not libclang-cpp, which other packages bring.
  ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 \
    || ls /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt_install "${missing[@]}"
fi
