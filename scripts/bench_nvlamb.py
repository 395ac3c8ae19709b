#!/usr/bin/env python
"""Optimizer step time on bart_base_preln's parameter shapes (~139M fp32), side by side.

Compares bart_ext's NVLAMB with torch AdamW (fused, and foreach) and a
per-tensor Python-loop LAMB (the readable algorithm, one tensor at a time).
Rounds alternate the order; the figure is the median step time. Memory beyond
parameters, gradients and the two moments is measured in a fresh process per
optimizer: what a step leaves allocated, and the peak above that during a step.

Usage: python scripts/bench_nvlamb.py [--rounds 5] [--steps 3] [--no-loop]

"nvlamb" is the default optimizer (fp32 on the CPU: the compiled passes of
bart_ext/csrc/nvlamb_cpu.c); "nvlamb torch" the same step in PyTorch operations
only (cpu_kernel=False). "first step" includes compiling the kernel when it is
not cached yet; the compile time is also printed separately, into an empty cache.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.nvlamb import NVLAMB, no_decay, param_groups  # noqa: E402


def base_shapes(vocab: int = 50265) -> list[tuple[int, ...]]:
    from bart_ext.model import BartConfig, BartModel

    with torch.device("meta"):
        model = BartModel(BartConfig(vocab_size=vocab, embed_dim=768, ffn_dim=3072, attention_heads=12))
    return [tuple(p.shape) for p in {id(p): p for p in model.parameters()}.values()]


class LoopLAMB(torch.optim.Optimizer):
    """NVLAMB one tensor at a time in plain PyTorch: the baseline a straightforward port gives."""

    def __init__(self, groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, max_grad_norm=1.0):
        super().__init__(groups, dict(lr=lr, betas=betas, eps=eps, max_grad_norm=max_grad_norm, weight_decay=0.0))

    @torch.no_grad()
    def step(self):
        ps = [p for g in self.param_groups for p in g["params"]]
        norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ps))
        for g in self.param_groups:
            b1, b2 = g["betas"]
            clip = g["max_grad_norm"] / norm if norm > g["max_grad_norm"] else 1.0
            for p in g["params"]:
                st = self.state[p]
                if not st:
                    st.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                st["t"] += 1
                grad = p.grad * clip
                st["m"].mul_(b1).add_(grad, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                u = (st["m"] / (1 - b1 ** st["t"])) / ((st["v"] / (1 - b2 ** st["t"])).sqrt() + g["eps"])
                u.add_(p, alpha=g["weight_decay"])
                wn, un = p.norm(), u.norm()
                r = wn / un if wn > 0 and un > 0 else 1.0
                p.sub_(g["lr"] * r * u)


def build(name: str, params):
    if name == "nvlamb":
        return NVLAMB(param_groups(params, 0.01), lr=1e-3)
    if name == "nvlamb torch":  # PyTorch operations only (the path GPUs and machines without a compiler take)
        return NVLAMB(param_groups(params, 0.01), lr=1e-3, cpu_kernel=False)
    if name == "adamw fused":
        return torch.optim.AdamW(param_groups(params, 0.01), lr=1e-3, fused=True)
    if name == "adamw foreach":
        return torch.optim.AdamW(param_groups(params, 0.01), lr=1e-3, foreach=True)
    if name == "lamb loop":
        return LoopLAMB(param_groups(params, 0.01), lr=1e-3)
    raise ValueError(name)


def make_params(shapes):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return params


def rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_probe(name: str) -> None:
    """In a fresh process: MiB an optimizer holds beyond params, grads and its two moments.

    persistent: what stays allocated after a step, less the two moments;
    transient: the peak during a step above that.
    """
    params = make_params(base_shapes())
    before = rss_kib("VmRSS")
    opt = build(name, params)
    opt.step()  # state allocated
    steady = rss_kib("VmRSS")
    moments = 2 * sum(p.numel() for p in params) * 4 / 1024
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS counter
        f.write("5")
    opt.step()
    print(json.dumps({"persistent_mib": (steady - before - moments) / 1024,
                      "transient_mib": (rss_kib("VmHWM") - steady) / 1024}))


def memory_of(name: str) -> dict:
    """``memory_probe(name)`` in a fresh process under glibc's own allocation policy: a caller's
    MALLOC_* settings that keep freed memory (README, the tip for fairseq's criteria) would hide a
    step's temporaries from the peak. Empty where the probe failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    probe = subprocess.run([sys.executable, __file__, "--memory-probe", name], capture_output=True, text=True, env=env)
    return json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per optimizer per round")
    ap.add_argument("--no-loop", action="store_true", help="leave out the slow per-tensor loop")
    ap.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return
    names = ["adamw fused", "adamw foreach", "nvlamb", "nvlamb torch"] + ([] if args.no_loop else ["lamb loop"])
    shapes = base_shapes()
    with tempfile.TemporaryDirectory() as tmp:  # one cold compile, timed
        env = dict(os.environ, BART_EXT_CACHE=tmp)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from bart_ext import nvlamb_cpu; assert nvlamb_cpu.load()"],
                       env=env, check=True, cwd=ROOT)
        print(f"CPU kernel: cold compile and load {time.perf_counter() - t0:.2f} s (cached afterwards)")
    n = sum(math.prod(s) for s in shapes)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; bart_base_preln shapes: {len(shapes)} "
          f"tensors, {n / 1e6:.1f}M fp32 parameters ({sum(no_decay(torch.empty(s, device='meta')) for s in shapes)} "
          f"without weight decay)")
    setups = {}
    for name in names:
        params = make_params(shapes)
        t0 = time.perf_counter()
        opt = build(name, params)
        opt.step()  # first step: state allocation (and any compilation)
        setups[name] = (params, opt, time.perf_counter() - t0)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else list(reversed(names))):
            _, opt, _ = setups[name]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                opt.step()
            times[name].append((time.perf_counter() - t0) / args.steps * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    fused = med["adamw fused"]
    print(f"{'optimizer':<15} {'step (median)':>14} {'vs fused AdamW':>15} {'first step':>11} "
          f"{'extra: kept':>12} {'+ in step':>10}")
    for name in names:
        mem = memory_of(name)
        print(f"{name:<15} {med[name]:>11.0f} ms {med[name] / fused:>14.2f}x {setups[name][2]:>9.1f} s "
              f"{mem.get('persistent_mib', float('nan')):>8.0f} MiB {mem.get('transient_mib', float('nan')):>6.0f} MiB")
    if "lamb loop" in med:
        print(f"nvlamb is {med['lamb loop'] / med['nvlamb']:.2f}x faster than the per-tensor loop")
    print(f"(parameters: {n * 4 / 2**20:.0f} MiB; each moment the same)")


if __name__ == "__main__":
    main()
