#!/usr/bin/env python3
"""The multiply-add rate this CPU gives the instruction mix of src/matmul.rs's four-column
product as lavapipe compiles it (Mesa 22.3 lowers fma to a multiply and an add): two rows of
four 8-wide columns per step, the row values broadcast, the column values loaded, eight
multiplies and eight adds. Once as a loop, once fully unrolled like the shader (64 rows x 128
reductions of straight-line code, about a megabyte), to tell the instruction fetch of unrolled
code from the arithmetic. Needs gcc. Prints multiply-add pairs (8 lanes each) per ns, one core.

usage: python3 tests/bench/cpu_mul_add.py
"""
import os
import subprocess
import tempfile

HEAD = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define STEP(g, t) { __m256 x = _mm256_broadcast_ss(&a[(g) * 128 + (t)]), y = _mm256_broadcast_ss(&a[((g) + 1) * 128 + (t)]); \
    c0 = _mm256_add_ps(c0, _mm256_mul_ps(x, b[(t) * 4])); c1 = _mm256_add_ps(c1, _mm256_mul_ps(x, b[(t) * 4 + 1])); \
    c2 = _mm256_add_ps(c2, _mm256_mul_ps(x, b[(t) * 4 + 2])); c3 = _mm256_add_ps(c3, _mm256_mul_ps(x, b[(t) * 4 + 3])); \
    d0 = _mm256_add_ps(d0, _mm256_mul_ps(y, b[(t) * 4])); d1 = _mm256_add_ps(d1, _mm256_mul_ps(y, b[(t) * 4 + 1])); \
    d2 = _mm256_add_ps(d2, _mm256_mul_ps(y, b[(t) * 4 + 2])); d3 = _mm256_add_ps(d3, _mm256_mul_ps(y, b[(t) * 4 + 3])); }
#define ZERO __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, d0 = c0, d1 = c0, d2 = c0, d3 = c0;
#define SAVE(g) out[(g) * 4] = c0; out[(g) * 4 + 1] = c1; out[(g) * 4 + 2] = c2; out[(g) * 4 + 3] = c3; \
    out[(g) * 4 + 4] = d0; out[(g) * 4 + 5] = d1; out[(g) * 4 + 6] = d2; out[(g) * 4 + 7] = d3;
"""

MAIN = r"""
int main(void) {
    static __m256 b[512], out[256]; static float a[8192];
    for (int i = 0; i < 512; i++) b[i] = _mm256_set1_ps(i * 1e-3f);
    for (int i = 0; i < 8192; i++) a[i] = i * 1e-4f;
    long reps = 20000;
    double t0 = now();
    for (long r = 0; r < reps; r++) { body(b, a, out); __asm__ volatile("" ::: "memory"); }
    double t = now() - t0;
    float o[8]; _mm256_storeu_ps(o, out[3]);
    printf("%s: %.2f pairs/ns (check %g)\n", NAME, (double)reps * 32 * 128 * 8 / t / 1e9, o[0]);
    return 0;
}
"""


def looped():
    return (HEAD + "#define NAME \"loop\"\n"
            "__attribute__((noinline)) void body(const __m256 *b, const float *a, __m256 *out) {\n"
            "  for (int g = 0; g < 64; g += 2) { ZERO for (int t = 0; t < 128; t++) STEP(g, t) SAVE(g) }\n"
            "}\n" + MAIN)


def unrolled():
    body = []
    for g in range(0, 64, 2):
        body.append("{ ZERO " + " ".join(f"STEP({g}, {t})" for t in range(128)) + f" SAVE({g}) }}")
    return (HEAD + "#define NAME \"unrolled\"\n"
            "__attribute__((noinline)) void body(const __m256 *b, const float *a, __m256 *out) {\n"
            + "\n".join(body) + "\n}\n" + MAIN)


def main():
    with tempfile.TemporaryDirectory() as d:
        for name, src in [("loop", looped()), ("unrolled", unrolled())]:
            c = os.path.join(d, name + ".c")
            exe = os.path.join(d, name)
            open(c, "w").write(src)
            # No contraction: a multiply and an add, as lavapipe emits them.
            subprocess.run(["gcc", "-O2", "-mavx2", "-ffp-contract=off", c, "-o", exe], check=True)
            subprocess.run([exe], check=True)


if __name__ == "__main__":
    main()
