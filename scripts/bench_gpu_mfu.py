#!/usr/bin/env python
"""Training throughput and model FLOPs utilisation of the real training step, on one GPU.

Real batches through the real step: the `bart_denoising` task on LDDL shards (length bins,
padding, BART noise) or on a fairseq-preprocess folder, the registered model (`--arch`) with
`--bf16-autocast`, the criterion (`bart_cross_entropy`, or fairseq's `cross_entropy` with
--unfused), optionally `--compile`, and NVLAMB through fairseq's optimizer wrapper; each step
is `task.train_step` (what fairseq's trainer calls: forward, loss, backward) then the optimizer
step, as in `fairseq-train` without its logging and checkpoints. For each sequence length it
prints sequences/s, non-padding target tokens/s and the model FLOPs utilisation:

    FLOPs per step = 6 x parameters x real tokens (forward + backward matmuls; the encoder's
                     parameters count source tokens, the decoder's and the output layer's
                     target tokens) + 12 x width x (attention scores and values over the padded
                     batch: encoder self, decoder self and cross)

against the GPU's dense bf16 peak (--peak-tflops; H200/H100 SXM 989). Padding slots do work
that counts for nothing, so they count in the attention term only. NVIDIA's published
single-A100 bf16 figures for the recipe are printed beside it (326.5 sequences/s at 128, 69.3
at 512). Target on an H200: at least 50% MFU. `--device cpu` runs the same code on the CPU (a
smoke test of the script; the MFU there is meaningless).

`--profile N` then runs N more steps of the first length (again on batches it has timed, whose
shapes are compiled already) under the PyTorch profiler and prints
where the time went: the step's phases (fairseq's "forward" and "backward" ranges, the optimizer
step) in wall time, how busy the GPU was over those steps (its kernels' time over wall time; far
below 100% means the step waits on the host: launches, syncs, Python), and the operators with the
most time on the device. `--trace DIR` also writes the profile as a Chrome trace there. (The
fused loss computes its gradients during the forward, so "forward" holds that share of backward work.)

Usage: python scripts/bench_gpu_mfu.py DATA [--arch bart_large_preln] [--lengths 128,512]
           [--batch 128,32] [--steps 20] [--warmup 5] [--compile] [--unfused] [--device cuda]
           [--profile N [--trace DIR]]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NVIDIA_A100_SEQ_PER_S = {128: 326.5, 512: 69.3}


def setup(data: Path, arch: str, length: int, compile_: bool, unfused: bool, device: str):
    """Task, model, criterion and fairseq's NVLAMB wrapper, built from a command line as fairseq-train builds them."""
    from fairseq import options, optim, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import user_dir  # noqa: F401  (registers the task, model, criteria and optimizer)

    argv = [str(data), "--task", "bart_denoising", "--arch", arch, "--tokens-per-sample", str(length),
            "--criterion", "cross_entropy" if unfused else "bart_cross_entropy", "--optimizer", "nvlamb",
            "--lr", "1e-4", "--bf16-autocast", *(["--compile"] if compile_ else []),
            *(["--cpu"] if device == "cpu" else [])]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model).to(device)
    criterion = task.build_criterion(cfg.criterion)
    optimizer = optim.build_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    return task, model, criterion, optimizer


def real_batches(task, batch: int, count: int, device: str) -> list[dict]:
    from fairseq import utils

    dataset = task.load_dataset("train")
    itr = task.get_batch_iterator(dataset, max_sentences=batch, max_tokens=None,
                                  max_positions=task.max_positions()).next_epoch_itr(shuffle=True)
    out = []
    for sample in itr:
        if sample and sample["target"].size(0) == batch:  # full batches: a fair sequences/s
            out.append(utils.move_to_cuda(sample) if device == "cuda" else sample)
        if len(out) == count:
            return out
    if not out:
        raise SystemExit(f"no full batch of {batch} sequences in {task.cfg.data}")
    return (out * count)[:count]  # a small corpus: reuse batches


def flops(model, sample: dict) -> float:
    """Model FLOPs of one training step on ``sample`` (see the module docstring)."""
    enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder.") and "embed_tokens" not in n)
    dec = sum(p.numel() for n, p in model.named_parameters() if n.startswith("decoder.") and "embed_tokens" not in n)
    out = model.decoder.output_projection.weight.numel()
    pad = model.decoder.padding_idx
    src, tgt = sample["net_input"]["src_tokens"], sample["target"]
    src_real, tgt_real = int(src.ne(pad).sum()), int(tgt.ne(pad).sum())
    width = model.decoder.embed_tokens.embedding_dim
    b, s, t = src.size(0), src.size(1), tgt.size(1)
    layers_e, layers_d = len(model.encoder.layers), len(model.decoder.layers)
    attention = 12 * width * b * (layers_e * s * s + layers_d * (t * t + t * s))  # fwd + bwd, scores and values
    return 6 * (enc * src_real + (dec + out) * tgt_real) + attention


def measure(task, model, criterion, optimizer, batches: list[dict], warmup: int, device: str):
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times = []
    graphs = 0  # graphs torch.compile built during the timed steps (a new shape): their time is in `times`
    for i, sample in enumerate(batches):
        before = compiled_graphs()
        sync()
        t0 = time.perf_counter()
        task.train_step(sample, model, criterion, optimizer, update_num=i)
        optimizer.step()
        optimizer.zero_grad()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            graphs += compiled_graphs() - before
    return statistics.median(times), graphs


def compiled_graphs() -> int:
    """How many graphs torch.compile has built in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def graph_breaks(since: dict[str, int] | None = None) -> dict[str, int]:
    """torch.compile's graph breaks in this process, by reason (its first line), less those in ``since``."""
    from torch._dynamo.utils import counters

    out: dict[str, int] = {}
    for reason, n in counters["graph_break"].items():
        key = str(reason).strip().splitlines()[0][:120]
        out[key] = out.get(key, 0) + n
    since = since or {}
    return {k: n - since.get(k, 0) for k, n in out.items() if n > since.get(k, 0)}


def profile_steps(task, model, criterion, optimizer, batches: list[dict], device: str, trace: Path | None,
                  rows: int = 20) -> dict:
    """Run ``batches`` as training steps under the profiler; print and return where the time went."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for i, sample in enumerate(batches):
            task.train_step(sample, model, criterion, optimizer, update_num=i)  # "forward", "backward" ranges
            with record_function("optimizer"):
                optimizer.step()
                optimizer.zero_grad()
        sync()
    wall = time.perf_counter() - t0
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    phases: dict[str, float] = {}
    busy = 0.0
    for e in prof.events():  # the raw events: the host's ranges, and the device's kernels and copies
        if e.device_type == cpu and e.name in ("forward", "backward", "optimizer"):
            phases[e.name] = phases.get(e.name, 0.0) + e.cpu_time_total / 1e6
        elif e.device_type == cuda and not e.is_user_annotation:  # not the ranges mirrored on the device
            busy += e.device_time_total / 1e6
    n = len(batches)
    report = {"steps": n, "wall_s_per_step": wall / n, "phases_s_per_step": {k: v / n for k, v in phases.items()},
              "device_busy": busy / wall if device == "cuda" else None}
    print(f"profile of {n} steps: {wall / n * 1e3:,.1f} ms per step; "
          + ", ".join(f"{k} {v / n * 1e3:,.1f} ms (host)" for k, v in phases.items())
          + (f"; GPU busy {busy / wall:.0%} of the wall time" if device == "cuda" else ""))
    sort = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=rows), flush=True)
    if trace is not None:
        trace.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace / "bench_gpu_mfu_trace.json"))
        print(f"Chrome trace: {trace / 'bench_gpu_mfu_trace.json'}")
    return report


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="LDDL shards (scripts/lddl_preprocess.py) or a fairseq-preprocess folder")
    ap.add_argument("--arch", default="bart_large_preln")
    ap.add_argument("--lengths", default="128,512")
    ap.add_argument("--batch", default="128,32", help="sequences per step, one per length")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--unfused", action="store_true", help="fairseq's cross_entropy instead of bart_cross_entropy")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="then profile N more steps at the first length and print where the time went")
    ap.add_argument("--trace", type=Path, help="with --profile: write a Chrome trace into this folder")
    args = ap.parse_args(argv)
    if args.trace is not None and not args.profile:
        sys.exit("--trace needs --profile N")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu_mfu.py needs a CUDA GPU (or --device cpu for a smoke test)")
    lengths = [int(x) for x in args.lengths.split(",")]
    sizes = [int(x) for x in args.batch.split(",")]
    if len(sizes) != len(lengths):
        sys.exit(f"--batch gives {len(sizes)} sizes for {len(lengths)} lengths")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    results = []
    breaks_before = graph_breaks()  # a process that compiled before (a test run): not this run's
    for length, batch in zip(lengths, sizes):
        task, model, criterion, optimizer = setup(args.data, args.arch, length, args.compile, args.unfused,
                                                  args.device)
        batches = real_batches(task, batch, args.warmup + args.steps, args.device)
        t, graphs = measure(task, model, criterion, optimizer, batches, args.warmup, args.device)
        measured = batches[args.warmup:]
        step_flops = statistics.mean(flops(model, b) for b in measured)
        real = statistics.mean(int(b["target"].ne(model.decoder.padding_idx).sum()) for b in measured)
        slots = statistics.mean(b["target"].numel() for b in measured)
        tflops = step_flops / t / 1e12
        row = {"length": length, "batch": batch, "seconds_per_step": t, "sequences_per_s": batch / t,
               "target_tokens_per_s": real / t, "target_padding": 1 - real / slots, "tflops": tflops,
               "mfu": tflops / args.peak_tflops, "graphs_compiled_while_timed": graphs,
               "graph_breaks": graph_breaks(breaks_before)}
        results.append(row)
        print(f"{name}: {args.arch}, bf16 autocast, {'fairseq loss' if args.unfused else 'fused loss'}"
              f"{', compiled' if args.compile else ''}, NVLAMB; length {length}, batch {batch}: "
              f"{row['sequences_per_s']:,.1f} sequences/s, {row['target_tokens_per_s']:,.0f} target tokens/s "
              f"({row['target_padding']:.0%} padding), {tflops:,.1f} TFLOP/s = {row['mfu']:.1%} MFU "
              f"(NVIDIA A100 bf16: {NVIDIA_A100_SEQ_PER_S.get(length, '-')} sequences/s)"
              + (f"; {graphs} graph(s) compiled during the {args.steps} timed steps (new shapes): the median may"
                 f" hold compile time, use more --warmup" if graphs else ""), flush=True)
        if args.compile and row["graph_breaks"]:  # each splits a compiled layer's graph
            print("  graph breaks in this run: " + "; ".join(f"{n} x {r}" for r, n in row["graph_breaks"].items()))
        if args.profile and not results[:-1]:
            # Batches that have run already: their shapes are compiled, so no compile lands in the profile.
            again = [measured[i % len(measured)] for i in range(args.profile)]
            row["profile"] = profile_steps(task, model, criterion, optimizer, again, args.device, args.trace)
    return results


if __name__ == "__main__":
    main()
