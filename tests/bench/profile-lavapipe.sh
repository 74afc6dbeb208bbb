#!/usr/bin/env bash
# Samples where a command's shaders spend their time on lavapipe, without hardware counters
# (this machine's VM has none): perf's cpu-clock timer samples every thread, and the JIT code
# those samples land in is dumped from the running process (gdb) and disassembled (objdump).
# Lavapipe compiles each pipeline when it is created, so WAIT must cover the compiles and the
# window must fall inside the work to profile.
#
# usage: bash tests/bench/profile-lavapipe.sh WAIT SECONDS OUTDIR -- COMMAND [ARGS...]
# e.g.:  bash tests/bench/profile-lavapipe.sh 30 4 /tmp/prof -- \
#            target/release/deepml bench --only Angular
# then:  python3 tests/bench/jit_profile.py /tmp/prof
set -euo pipefail
if [ $# -lt 5 ] || [ "$4" != "--" ]; then
    sed -n '2,12p' "$0"
    exit 2
fi
wait_s=$1 secs=$2 out=$3
shift 4
for tool in perf gdb objdump; do
    if ! command -v "$tool" >/dev/null; then
        echo "needs $tool: apt-get install -y linux-perf gdb binutils" >&2
        exit 2
    fi
done
mkdir -p "$out"
rm -f "$out"/jit-*.bin "$out"/perf.data "$out"/maps
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg}
mkdir -p -m 700 "$XDG_RUNTIME_DIR"
"$@" >"$out/command.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
sleep "$wait_s"
if ! kill -0 $pid 2>/dev/null; then
    echo "the command ended within $wait_s s: nothing to sample (see $out/command.log)" >&2
    exit 1
fi
perf record -q -e cpu-clock -F 4000 -p $pid -o "$out/perf.data" -- sleep "$secs" >/dev/null 2>&1
cp /proc/$pid/maps "$out/maps"
# Dump every executable anonymous mapping that holds at least 5% of the samples.
perf script -i "$out/perf.data" -F ip 2>/dev/null | python3 -c '
import sys, collections
maps = []
for line in open(sys.argv[1]):
    f = line.split()
    if f[1].startswith("r-x") and len(f) < 6:
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        maps.append((lo, hi))
hits = collections.Counter()
total = 0
for ip in sys.stdin.read().split():
    ip = int(ip, 16)
    total += 1
    for lo, hi in maps:
        if lo <= ip < hi:
            hits[(lo, hi)] += 1
            break
for (lo, hi), n in hits.items():
    if n >= 0.05 * total:
        print(f"{lo:#x} {hi:#x}")
' "$out/maps" | while read -r lo hi; do
    gdb -p $pid -batch -ex "dump memory $out/jit-${lo#0x}.bin $lo $hi" >/dev/null 2>&1
done
echo "samples and $(ls "$out"/jit-*.bin 2>/dev/null | wc -l) JIT mappings in $out; run: python3 tests/bench/jit_profile.py $out"
