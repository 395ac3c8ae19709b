"""Per-core peak of this CPU's multiply-add instructions: why bf16 does or does not pay here.

``bart_ext.hardware`` times matmuls, which says *whether* bf16 is slower than fp32 on a CPU; this
probe says *why*, from the instructions themselves. It compiles a small C program with the
system's C compiler (``-O2 -march=native``) and times three loops of 24 independent accumulators
(enough to hide each instruction's latency):

- ``vfmadd231ps``: the fp32 FMA that MKL's SGEMM runs on (16 lanes, 32 FLOP);
- ``vdpbf16ps``: AVX512-BF16's dot product, what oneDNN's bf16 matmul runs on where there is no
  AMX (32 bf16 products accumulated in fp32, 64 FLOP);
- ``vfmadd231ph``: AVX512-FP16's half-precision FMA (32 lanes, 64 FLOP), which accumulates in fp16.

On a 2-core Xeon (family 6, model 207) whose hypervisor showed AVX512-BF16 and AVX512-FP16 but no
AMX (2026-12-06), ``vdpbf16ps`` issued at a quarter of the FMA's rate, so the bf16 peak was half
of fp32's, as oneDNN's bf16 matmuls (153-171 GFLOP/s against MKL's 240-323 in fp32) showed.

Usage: python scripts/bench_isa.py [--json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The three loops share one shape: 24 accumulators, each updated once per iteration, so the
# instructions are independent within an iteration and a chain's latency is hidden.
SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define CHAINS 24
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

static void fp32(long iters) {
    __m512 acc[CHAINS], b = _mm512_set1_ps(1.0001f), c = _mm512_set1_ps(0.9999f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    double t = now();
    for (long n = 0; n < iters; n++) {
#pragma GCC unroll 24
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], b, c);
    }
    double dt = now() - t; float sink = 0;
    for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(acc[i]);
    printf("vfmadd231ps %.6f %ld 32 %g\n", dt, iters * CHAINS, sink);
}

static void bf16(long iters) {
    __m512 acc[CHAINS];
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3f80);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    double t = now();
    for (long n = 0; n < iters; n++) {
#pragma GCC unroll 24
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], x, y);
    }
    double dt = now() - t; float sink = 0;
    for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(acc[i]);
    printf("vdpbf16ps %.6f %ld 64 %g\n", dt, iters * CHAINS, sink);
}

#ifdef __AVX512FP16__
static void fp16(long iters) {
    __m512h acc[CHAINS], b = _mm512_set1_ph((_Float16)1.0), c = _mm512_set1_ph((_Float16)0.0);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ph((_Float16)i);
    double t = now();
    for (long n = 0; n < iters; n++) {
#pragma GCC unroll 24
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ph(acc[i], b, c);
    }
    double dt = now() - t; float sink = 0;
    for (int i = 0; i < CHAINS; i++) sink += (float)_mm512_reduce_add_ph(acc[i]);
    printf("vfmadd231ph %.6f %ld 64 %g\n", dt, iters * CHAINS, sink);
}
#endif

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 4000000L;
    fp32(iters);
    bf16(iters);
#ifdef __AVX512FP16__
    fp16(iters);
#endif
    return 0;
}
"""

NEEDED_FLAGS = ("avx512f", "avx512_bf16")
DESCRIPTION = {
    "vfmadd231ps": "fp32 FMA (MKL's SGEMM)",
    "vdpbf16ps": "bf16 dot product, fp32 accumulation (oneDNN's bf16 matmul without AMX)",
    "vfmadd231ph": "fp16 FMA, fp16 accumulation",
}


def compile_probe(workdir: Path) -> Path:
    """Compile ``SOURCE`` in ``workdir``; raise SystemExit naming what is missing."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench_isa: no C compiler (cc or gcc) on PATH")
    src, exe = workdir / "isa_probe.c", workdir / "isa_probe"
    src.write_text(SOURCE)
    done = subprocess.run([cc, "-O2", "-march=native", str(src), "-o", str(exe)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_isa: {cc} could not compile the probe for this CPU:\n{done.stderr.strip()}")
    return exe


def parse(stdout: str) -> dict[str, dict[str, float]]:
    """The probe's lines (``name seconds instructions flop_per_instruction sink``) -> per-core rates."""
    rates = {}
    for line in stdout.splitlines():
        name, seconds, count, flop, _sink = line.split()
        seconds, count, flop = float(seconds), int(count), int(flop)
        rates[name] = {"ginstr_per_s": count / seconds / 1e9, "gflops_per_core": count * flop / seconds / 1e9}
    return rates


def measure(rounds: int = 3, iters: int = 4_000_000) -> dict[str, dict[str, float]]:
    """The best of ``rounds`` runs of the probe, per instruction."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_probe(Path(tmp))
        best: dict[str, dict[str, float]] = {}
        for _ in range(rounds):
            out = subprocess.run([str(exe), str(iters)], capture_output=True, text=True, check=True).stdout
            for name, rate in parse(out).items():
                if name not in best or rate["gflops_per_core"] > best[name]["gflops_per_core"]:
                    best[name] = rate
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    from bart_ext.hardware import cpu_flags

    flags = cpu_flags()
    missing = [f for f in NEEDED_FLAGS if flags is not None and f not in flags]
    if missing:
        raise SystemExit(f"bench_isa: this CPU lacks {', '.join(missing)} (from /proc/cpuinfo); nothing to probe")
    rates = measure(args.rounds)
    fp32 = rates["vfmadd231ps"]["gflops_per_core"]
    if args.json:
        print(json.dumps({name: {**r, "vs_fp32": r["gflops_per_core"] / fp32} for name, r in rates.items()}))
        return
    print(f"best of {args.rounds} runs, one core, 24 independent accumulators:")
    for name, r in rates.items():
        print(f"  {name:12s} {r['ginstr_per_s']:5.2f} Ginstr/s  {r['gflops_per_core']:6.1f} GFLOP/s per core  "
              f"{r['gflops_per_core'] / fp32:4.2f}x fp32   {DESCRIPTION[name]}")
    if "amx_bf16" not in (flags or set()):
        print("  (no amx_bf16 flag: bf16 matmuls run on vdpbf16ps, so their peak is its row)")


if __name__ == "__main__":
    sys.exit(main())
