#!/usr/bin/env python3
"""Where lavapipe's JIT-compiled shaders spend their time: reads what profile-lavapipe.sh
collected (perf samples, the process's memory map, dumps of its executable anonymous mappings)
and prints, for each dumped mapping, the instruction mix weighted by samples, the share of the
samples before, inside and after each run of multiply instructions (in an unrolled product:
loads and staging, the multiply-adds, the epilogue), and the hottest window of instructions.

usage: jit_profile.py DIR [WINDOW]
"""
import collections
import glob
import os
import re
import subprocess
import sys


def load_samples(d):
    hot = collections.Counter()
    out = subprocess.run(
        ["perf", "script", "-i", os.path.join(d, "perf.data"), "-F", "ip"],
        capture_output=True, text=True, check=True).stdout
    for line in out.split():
        hot[int(line, 16)] += 1
    return hot


def load_maps(d):
    maps = []
    for line in open(os.path.join(d, "maps")):
        f = line.split()
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        maps.append((lo, hi, f[1], " ".join(f[5:]) if len(f) > 5 else "[anon]"))
    return maps


def disassemble(path, start):
    out = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", f"--adjust-vma={start:#x}", path],
        capture_output=True, text=True, check=True).stdout
    ins = []
    for line in out.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\t[0-9a-f ]+\t(.*)", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    return ins


def mnemonic(t):
    return t.split()[0] if t else "?"


def main():
    d = sys.argv[1]
    window = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    hot = load_samples(d)
    maps = load_maps(d)
    total = sum(hot.values())
    by_map = collections.Counter()
    for ip, n in hot.items():
        for lo, hi, perm, name in maps:
            if lo <= ip < hi:
                by_map[(lo, name if name != "[anon]" else f"[anon {perm}]")] += n
                break
        else:
            by_map[(0, "?")] += n
    print(f"{total} samples")
    for (lo, name), n in by_map.most_common(8):
        print(f"  {100 * n / total:5.1f}%  {name} at {lo:#x}")
    for dump in sorted(glob.glob(os.path.join(d, "jit-*.bin"))):
        start = int(os.path.basename(dump)[4:-4], 16)
        ins = disassemble(dump, start)
        w = [hot.get(a, 0) for a, _ in ins]
        n = sum(w)
        print(f"\nmapping {start:#x}: {len(ins)} instructions, {100 * n / total:.1f}% of the samples")
        mix = collections.Counter()
        for (a, t), c in zip(ins, w):
            mix[mnemonic(t)] += c
        print("  weighted mix:", ", ".join(f"{k} {100 * v / max(n, 1):.0f}%" for k, v in mix.most_common(12)))
        # Runs of multiplies (gaps of under 3000 instructions join a run).
        muls = [i for i, (_, t) in enumerate(ins) if mnemonic(t) in ("vmulps", "vfmadd231ps", "vfmadd213ps")]
        runs = []
        for i in muls:
            if runs and i - runs[-1][1] < 3000:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        edges = [0]
        for lo, hi in runs:
            edges += [lo, hi + 1]
        edges.append(len(ins))
        for k in range(len(edges) - 1):
            lo, hi = edges[k], edges[k + 1]
            if hi <= lo:
                continue
            part = sum(w[lo:hi])
            kind = "multiply run" if k % 2 == 1 else "other"
            print(f"  instructions {lo}-{hi} ({kind}): {100 * part / max(n, 1):.1f}%")
        cs = [0]
        for x in w:
            cs.append(cs[-1] + x)
        best = max(range(max(len(ins) - window, 1)), key=lambda i: cs[min(i + window, len(ins))] - cs[i])
        print(f"  hottest {window} instructions:")
        for (a, t), c in zip(ins[best:best + window], w[best:best + window]):
            print(f"    {c:5d} {a:x} {t}")


if __name__ == "__main__":
    main()
