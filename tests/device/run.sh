#!/usr/bin/env bash
# Runs on a lent GPU machine (the `device` tool), in the repository root, over binaries that
# tests/device/pack.sh built here: adapter info, the public conformance cases and the benchmark
# on each backend, then every test binary on Vulkan. Results go to $OUT.
# Usage there: bash tests/device/run.sh [bench sizes...]   (carry .gl and .devbin)
set -u
OUT=${OUT:-/tmp/deepml-out}
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f $icd ] && export VK_DRIVER_FILES=$icd
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f $egl ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
export XDG_RUNTIME_DIR=/tmp/xdg
mkdir -p -m 700 $XDG_RUNTIME_DIR
# The test binaries find their data through the path they were built at.
root=$PWD
if [ "$root" != /work/main ]; then mkdir -p /work && ln -sfn "$root" /work/main; fi
B=/tmp/devbin
mkdir -p $B target/release
for f in .devbin/*.xz; do xz -dc "$f" >"$B/$(basename "$f" .xz)"; chmod +x "$B/$(basename "$f" .xz)"; done
cp $B/deepml target/release/deepml
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv 2>&1 | tee "$OUT/gpu.txt"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
for be in vulkan gl; do
    log "$be info"
    WGPU_BACKEND=$be timeout 60 $B/deepml info 2>&1 | tee -a "$OUT/summary.txt"
    log "$be check"
    WGPU_BACKEND=$be timeout 120 $B/deepml check tests/cases/public.json >"$OUT/check-$be.txt" 2>&1
    echo "exit $?" >>"$OUT/check-$be.txt"
    tail -3 "$OUT/check-$be.txt" | tee -a "$OUT/summary.txt"
done
for size in "${@:-16777216}"; do
    log "bench vulkan size $size"
    WGPU_BACKEND=vulkan timeout 240 $B/deepml bench --size "$size" --json "$OUT/bench-vulkan-$size.json" \
        --markdown "$OUT/bench-vulkan-$size.md" 2>"$OUT/bench-vulkan-$size.log"
    echo "exit $?" | tee -a "$OUT/summary.txt"
    cat "$OUT/bench-vulkan-$size.md" | tee -a "$OUT/summary.txt"
done
log "examples/arcface_gflops"
WGPU_BACKEND=vulkan timeout 60 $B/arcface_gflops 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
for t in $B/*; do
    case $(basename "$t") in deepml | arcface_gflops) continue ;; esac
    log "test $(basename "$t") on vulkan"
    WGPU_BACKEND=vulkan DEEPML_EXPECT_BACKEND=vulkan timeout 150 "$t" >"$OUT/test-$(basename "$t").txt" 2>&1
    echo "exit $?" >>"$OUT/test-$(basename "$t").txt"
    grep -E "^test result|panicked|FAILED|^exit" "$OUT/test-$(basename "$t").txt" | tail -6 | tee -a "$OUT/summary.txt"
done
cd "$OUT" && tar czf logs.tgz --remove-files test-*.txt check-*.txt bench-*.log 2>/dev/null
ls "$OUT"
