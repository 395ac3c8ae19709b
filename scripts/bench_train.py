#!/usr/bin/env python
"""Training words/s and the memory a step adds: bart_preln against stock fairseq `bart` (Pre-LN), side by side.

All models get the same shapes, the same real batches (aclsum through bart_denoising, 128 tokens
per sample) and the same optimizer (torch Adam; with --optimizer fairseq, each side's
implementation of fairseq's `adam` update: fairseq's own for stock, bart_ext's fused `bart_adam`
for bart_preln); one training step is forward, the criterion, backward and the optimizer step.
Configurations:

    stock      fairseq `bart` with the Pre-LN flags, fp32, fairseq's `cross_entropy`
    fp32       bart_preln, fp32, fairseq's `cross_entropy` (full logits)
    fused      bart_preln, fp32, `bart_cross_entropy` (chunked projection + loss)
    fused+compile  the same with --compile (fp32)
    bf16       bart_preln --bf16-autocast, fairseq's `cross_entropy`
    bf16+fused bart_preln --bf16-autocast, `bart_cross_entropy`
    bf16+fused+compile  the same with --compile (compiled during the warm-up step)
    (memory only) fused+ckpt: fused with --checkpoint-activations

Rounds rotate through the configurations so drift in the machine hits all; the figure is the
median words/s (target tokens) over rounds. `best` is the fastest bart_preln configuration, `fp32_best`
the fastest one without bf16. Each configuration's row also gives the median minor page faults and
kernel (system) CPU seconds per step: what a step pays the kernel for fresh memory pages. On a CPU
without bf16 matrix instructions (no AVX512-BF16/AMX; PyTorch emulates bf16 there, about 0.04x
fp32's speed) the bf16 configurations are left out unless named in --configs.

Memory (--memory): the peak a step's forward, loss and backward add above parameters, gradients
and optimizer state, measured in a fresh process per configuration as the rise of the peak
resident set (VmHWM, reset through /proc/self/clear_refs) with glibc returning every block of
64 KiB or more to the system at once (MALLOC_MMAP_THRESHOLD_; the caller's other MALLOC_* settings
are dropped for it), so resident memory follows live tensors. Measured at mid size with the
dictionary padded to GPT-2's 50,265 entries.

Sizes: tiny (2+2 x36), 3x256, mid (6+6 x512) on 128-token samples with the data's dictionary, and base
(bart_base_preln, 6+6 x768) on 512-token samples with the dictionary padded to GPT-2's 50,265 entries
(`--sizes base --rounds 1 --steps 1`: one step of each configuration, about 5 minutes on 2 cores).

Usage: python scripts/bench_train.py [--rounds 5] [--steps 2] [--sizes tiny,mid] [--configs C1,C2,...] [--optimizer torch|fairseq] [--memory] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture
from fairseq.optim.adam import Adam as FairseqAdam

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bart_ext.adam import Adam as BartAdam  # noqa: E402
from bart_ext.adapters.fairseq_denoising import is_lddl  # noqa: E402
from bart_ext.hardware import EMULATED_BF16, bf16_emulated, matmul_gflops  # noqa: E402
from user_dir.bart_cross_entropy import BartCrossEntropy  # noqa: E402
from user_dir.bart_denoising import BartDenoisingTask  # noqa: E402
from user_dir.bart_preln import BartPreln  # noqa: E402

SIZES = {  # layers, width, heads, ffn
    "tiny": (2, 36, 3, 76),
    "3x256": (3, 256, 4, 1024),
    "mid": (6, 512, 8, 2048),
    "base": (6, 768, 12, 3072),  # bart_base_preln
}
CONFIGS = ("stock", "fp32", "fused", "fused+compile", "bf16", "bf16+fused", "bf16+fused+compile")
GPT2_ENTRIES = 50265
# Sizes whose batches differ from the default 128-token samples and the data's own dictionary:
# (tokens per sample, dictionary padded to at least this many entries).
SIZE_DATA = {"base": (512, GPT2_ENTRIES)}
log = print


def build(config: str, size: str, task) -> torch.nn.Module:
    layers, dim, heads, ffn = SIZES[size]
    if config != "stock":
        cfg = argparse.Namespace(encoder_layers=layers, decoder_layers=layers, encoder_embed_dim=dim,
                                 encoder_ffn_embed_dim=ffn, encoder_attention_heads=heads, max_positions=1024,
                                 dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, post_ln=False,
                                 init_missing_final_layer_norm=False, bf16_autocast=config.startswith("bf16"),
                                 checkpoint_activations="ckpt" in config, compile="compile" in config)
        return BartPreln.build_model(cfg, task)
    args = argparse.Namespace(encoder_layers=layers, decoder_layers=layers, encoder_embed_dim=dim,
                              decoder_embed_dim=dim, encoder_ffn_embed_dim=ffn, decoder_ffn_embed_dim=ffn,
                              encoder_attention_heads=heads, decoder_attention_heads=heads,
                              encoder_normalize_before=True, decoder_normalize_before=True)
    bart_base_architecture(args)
    return BARTModel.build_model(args, task)


def criterion(config: str, task):
    return BartCrossEntropy(task, False) if "fused" in config else CrossEntropyCriterion(task, False)


def forward_backward(model, crit, batch) -> None:
    loss, _, _ = crit(model, batch)
    loss.backward()


OPTIMIZERS = {
    "torch": "torch.optim.Adam for every configuration (the model's speed alone)",
    "fairseq": "fairseq's --optimizer adam for stock (fairseq.optim.adam.Adam, what it runs without apex), "
               "bart_ext's --optimizer bart_adam (the same update, fused) for bart_preln",
}


def optimizer(kind: str, config: str, params) -> torch.optim.Optimizer:
    """The step's optimizer, lr 1e-4: see ``OPTIMIZERS``."""
    if kind == "fairseq":
        return (FairseqAdam if config == "stock" else BartAdam)(params, lr=1e-4)
    return torch.optim.Adam(params, lr=1e-4)


def step(model, crit, opt, batch) -> None:
    opt.zero_grad(set_to_none=True)
    forward_backward(model, crit, batch)
    opt.step()


def load(data: Path, steps: int, max_tokens: int, entries: int = 0, tokens_per_sample: int = 128):
    if is_lddl(str(data)):
        raise SystemExit(f"--data {data} holds LDDL shards; bench_train.py times batches of fairseq-preprocess output "
                         "(scripts/prepare_data.py writes data/aclsum/bin)")
    task = BartDenoisingTask.from_data(data, tokens_per_sample=tokens_per_sample)
    ds = task.load_dataset("train")
    order = ds.ordered_indices()[-4000:]  # full-length samples
    batches, cur, tokens = [], [], 0
    for i in order:
        if tokens + ds.size(i) > max_tokens:
            batches.append(ds.collater([ds[j] for j in cur]))
            cur, tokens = [], 0
            if len(batches) == steps:
                break
        cur.append(i)
        tokens += ds.size(i)
    while len(task.dictionary) < entries:  # rows no batch uses: the 50k dictionary's output layer
        task.dictionary.add_symbol(f"madeupword{len(task.dictionary):05d}")
    return task, batches


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_child(config: str, size: str, data: Path, max_tokens: int) -> None:
    """In a fresh process: print the MiB one forward + loss + backward adds above a warmed-up step."""
    torch.manual_seed(0)
    task, batches = load(data, 1, max_tokens, GPT2_ENTRIES)
    model, crit = build(config, size, task).train(), criterion(config, task)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # the memory a step adds does not depend on it
    step(model, crit, opt, batches[0])  # gradients and optimizer state exist from here on
    opt.zero_grad(set_to_none=False)
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    forward_backward(model, crit, batches[0])
    print(json.dumps({"config": config, "peak_mib": (_rss_kib("VmHWM") - before) / 1024}))


def peak_mib(config: str, size: str, args) -> float:
    # glibc maps blocks of 64 KiB or more on their own and unmaps them when freed, so the resident set
    # follows live tensors; settings that keep freed memory (the README's MALLOC_MMAP_MAX_=0 tip for
    # fairseq's criteria) would leave earlier peaks resident and are dropped for this child.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run([sys.executable, __file__, "--_peak", config, "--sizes", size, "--data", str(args.data),
                          "--max-tokens", str(args.max_tokens)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"memory run of {config} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def chosen_configs(names: str | None) -> tuple[str, ...]:
    """The configurations to run, in CONFIGS' order; ``stock`` and ``fp32`` always (the ratios' bases)."""
    if names:
        unknown = set(names.split(",")) - set(CONFIGS)
        if unknown:
            raise SystemExit(f"--configs: unknown {', '.join(sorted(unknown))} (known: {', '.join(CONFIGS)})")
        want = {"stock", "fp32", *names.split(",")}
        return tuple(c for c in CONFIGS if c in want)
    if not bf16_emulated():
        return CONFIGS
    log(f"  bf16 configurations left out: {EMULATED_BF16} (name them in --configs to run them anyway)")
    return tuple(c for c in CONFIGS if "bf16" not in c)


def model_gflop_per_word(model: torch.nn.Module, src_per_tgt: float = 1.0) -> float:
    """6 x (non-embedding parameters + output projection) FLOPs per target token, the usual estimate
    (encoder work counted per source token, which here equals the target length)."""
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    out = model.decoder.output_projection.weight.numel()
    return 6 * (params * src_per_tgt + out) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "aclsum" / "bin")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="training steps per configuration per round")
    ap.add_argument("--sizes", default="tiny,mid")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="torch",
                    help="; ".join(f"{k}: {v}" for k, v in OPTIMIZERS.items()))
    ap.add_argument("--configs", help="configurations to run (stock and fp32 always run); default: all, less the "
                                      "bf16 ones on a CPU without bf16 matrix instructions")
    ap.add_argument("--memory", action="store_true", help="also measure each configuration's added peak memory")
    ap.add_argument("--json", action="store_true", help="one JSON object per size on stdout")
    ap.add_argument("--_peak", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._peak:
        return peak_child(args._peak, args.sizes, args.data, args.max_tokens)
    global log
    logging.getLogger("filelock").setLevel(logging.WARNING)  # torch.compile's cache locks, one DEBUG line each
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    torch.manual_seed(0)
    default_data = load(args.data, args.steps, args.max_tokens)
    # Best of 10 (of 1 where bf16 is emulated: about 8 s a product); fewer reps read low on a busy VM. Each
    # round measures again and the best of all counts: a peak read once, at a slow moment of an AVX2 VM
    # (78 GFLOP/s where 103-110 was usual), put the fp32 configurations at 119-126% MFU.
    emulated = bf16_emulated()
    peaks = {"bf16": matmul_gflops(torch.bfloat16, reps=1 if emulated else 10),
             "fp32": matmul_gflops(torch.float32, reps=10)}
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} rounds x {args.steps} steps "
        f"per configuration; matmul peak bf16 {peaks['bf16']:.0f} / fp32 {peaks['fp32']:.0f} GFLOP/s")
    log(f"optimizer: {OPTIMIZERS[args.optimizer]}")
    configs = chosen_configs(args.configs)
    for size in args.sizes.split(","):
        if size not in SIZES:
            raise SystemExit(f"--sizes: unknown {size} (known: {', '.join(SIZES)})")
        task, batches = default_data
        if size in SIZE_DATA:
            sample, entries = SIZE_DATA[size]
            task, batches = load(args.data, args.steps, args.max_tokens, entries, sample)
        words = sum(b["ntokens"] for b in batches)
        log(f"\n{size}: {len(batches)} batches of ~{words // len(batches)} target tokens "
            f"({batches[0]['net_input']['src_tokens'].size(1)} tokens per sample)")
        models = {c: build(c, size, task).train() for c in configs}
        crits = {c: criterion(c, task) for c in configs}
        opts = {c: optimizer(args.optimizer, c, m.parameters()) for c, m in models.items()}
        wps: dict[str, list[float]] = {c: [] for c in configs}
        # Page faults and kernel time per step: a step that allocates fresh large tensors (stock's
        # full logits) pays the kernel for their pages, and how much varies with the VM's state.
        faults: dict[str, list[float]] = {c: [] for c in configs}
        sys_s: dict[str, list[float]] = {c: [] for c in configs}
        for c in configs:  # warm-up (and --compile's compilation) on every batch shape
            t0 = time.perf_counter()
            for b in batches:
                step(models[c], crits[c], opts[c], b)
            if "compile" in c:
                log(f"  {c}: warm-up with compilation {time.perf_counter() - t0:.0f}s")
        for r in range(args.rounds):
            for dtype in ("fp32",) if emulated else ("fp32", "bf16"):
                peaks[dtype] = max(peaks[dtype], matmul_gflops(torch.float32 if dtype == "fp32" else torch.bfloat16,
                                                               reps=3))
            for c in configs[r % len(configs):] + configs[: r % len(configs)]:
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                for b in batches:
                    step(models[c], crits[c], opts[c], b)
                wps[c].append(words / (time.perf_counter() - t0))
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                faults[c].append((r1.ru_minflt - r0.ru_minflt) / len(batches))
                sys_s[c].append((r1.ru_stime - r0.ru_stime) / len(batches))
        med = {c: statistics.median(v) for c, v in wps.items()}
        best = max(configs[1:], key=med.get)
        fp32_best = max((c for c in configs[1:] if "bf16" not in c), key=med.get)
        gflop = model_gflop_per_word(models["fp32"])
        layers, dim, heads, ffn = SIZES[size]
        log(f"\n{size}: {layers}+{layers} x{dim} h{heads} ffn{ffn}, {len(task.dictionary):,} entries")
        med_faults = {c: statistics.median(v) for c, v in faults.items()}
        med_sys = {c: statistics.median(v) for c, v in sys_s.items()}
        log(f"  {'configuration':<20} {'words/s':>9} {'vs stock':>9} {'MFU bf16':>9} {'MFU fp32':>9} "
            f"{'faults/step':>12} {'kernel s/step':>14}")
        for c in configs:
            mfu_bf16 = "-" if emulated else f"{100 * med[c] * gflop / peaks['bf16']:.1f}%"  # emulated: no bf16 peak
            log(f"  {c:<20} {med[c]:>9,.0f} {med[c] / med['stock']:>8.2f}x {mfu_bf16:>9} "
                f"{100 * med[c] * gflop / peaks['fp32']:>8.1f}% {med_faults[c]:>12,.0f} {med_sys[c]:>14.2f}", flush=True)
        log(f"  best: {best} ({med[best] / med['stock']:.2f}x stock); without bf16: {fp32_best} "
            f"({med[fp32_best] / med['stock']:.2f}x); MFU against the best matmul of the run so far: "
            + ("" if emulated else f"bf16 {peaks['bf16']:.0f} / ") + f"fp32 {peaks['fp32']:.0f} GFLOP/s")
        if emulated:
            log("  (MFU bf16: none, bf16 is emulated on this CPU)")
        elif peaks["bf16"] < peaks["fp32"]:
            log(f"  (MFU bf16 is against this CPU's bf16 matmul peak, {peaks['bf16']:.0f} GFLOP/s, below its fp32 "
                f"peak ({peaks['fp32']:.0f}): it can pass 100% for fp32 configurations; scripts/bench_isa.py says why)")
        result = {"size": size, "stock_wps": med["stock"], "fp32_wps": med["fp32"], "best_wps": med[best],
                  "best_config": best, "best_ratio": med[best] / med["stock"], "fp32_ratio": med["fp32"] / med["stock"],
                  "fp32_best_config": fp32_best, "fp32_best_ratio": med[fp32_best] / med["stock"],
                  "optimizer": args.optimizer, "wps": med, "matmul_peak_gflops": dict(peaks), "model_gflop_per_word": gflop,
                  "minor_faults_per_step": med_faults, "kernel_s_per_step": med_sys}
        if args.memory and size == "mid":
            mem = {c: peak_mib(c, size, args) for c in ("stock", "fp32", "fused", "fused+ckpt", "bf16+fused")}
            log(f"  added peak of one step, {GPT2_ENTRIES:,}-entry dictionary: " + ", ".join(
                f"{c} {v:,.0f} MiB ({v / mem['stock']:.2f}x)" for c, v in mem.items()))
            result.update(stock_peak_mib=mem["stock"], fused_peak_mib=mem["fused"],
                          checkpointed_peak_mib=mem["fused+ckpt"], peak_mib=mem)
        if args.json:
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
