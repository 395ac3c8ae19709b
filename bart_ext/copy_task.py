"""A random-token copy task: does a BART of a given shape and optimiser learn to copy, and how fast?

Source and target are the same random sequence ``<s> x1 ... xn </s>``; the decoder sees it shifted
right (``</s> <s> x1 ...``), exactly as in denoising pretraining with no noise. Copying is what a
denoiser does with the 70% of tokens BART's noise leaves alone, so a set-up that cannot learn this
quickly cannot learn to reconstruct either. ``scripts/diagnose_copy.py`` sweeps settings with it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bart_ext.model import BartConfig, BartModel
from bart_ext.nvlamb import NVLAMB

PAD, BOS, EOS, FIRST = 1, 0, 2, 4  # fairseq's special indices; random tokens start at FIRST


@dataclass
class CopySetup:
    """One copy-task run.

    Args:
        vocab: random tokens to draw from (the dictionary has ``vocab + 4`` entries).
        min_len: shortest sequence (tokens between ``<s>`` and ``</s>``).
        max_len: longest sequence.
        zipf: 0 for uniform tokens, else draw token ``r`` with probability proportional to ``r ** -zipf``.
        dim: model width.
        layers: encoder and decoder layers.
        heads: attention heads.
        post_ln: Post-LN layout instead of Pre-LN.
        init_std: the models' ``init_std`` (BART's 0.02; ``dim ** -0.5`` is what narrow models need).
        optimizer: ``adam`` (torch's) or ``nvlamb`` (bart_ext's, weight decay 0.01).
        lr: peak learning rate (linear warm-up, then linear decay to 0 at ``steps``).
        warmup: warm-up updates.
        batch: sequences per update.
        steps: updates.
        seed: model initialisation and data.
        grow: a length curriculum: over the first ``grow`` updates the longest sequence grows
            linearly from ``min_len`` to ``max_len`` (0: every update draws up to ``max_len``).
    """

    vocab: int = 2000
    min_len: int = 8
    max_len: int = 16
    zipf: float = 0.0
    dim: int = 128
    layers: int = 3
    heads: int = 4
    post_ln: bool = False
    init_std: float = 0.02
    optimizer: str = "adam"
    lr: float = 2e-3
    warmup: int = 30
    batch: int = 32
    steps: int = 300
    seed: int = 0
    grow: int = 0

    def __post_init__(self) -> None:
        at_least = {"vocab": 1, "min_len": 1, "dim": 1, "layers": 1, "heads": 1, "warmup": 0, "batch": 1, "steps": 1,
                    "grow": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"copy task: {name} must be at least {low}, got {getattr(self, name)}")
        if self.max_len < self.min_len:
            raise ValueError(f"copy task: max_len ({self.max_len}) must be at least min_len ({self.min_len})")
        if self.dim % self.heads:
            raise ValueError(f"copy task: dim ({self.dim}) must be divisible by heads ({self.heads})")
        for name in ("lr", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"copy task: {name} must be positive, got {getattr(self, name)}")
        if self.zipf < 0:
            raise ValueError(f"copy task: zipf must be 0 (uniform) or positive, got {self.zipf}")
        if self.optimizer not in ("adam", "nvlamb"):
            raise ValueError(f"copy task: optimizer must be adam or nvlamb (got {self.optimizer!r})")

    def longest(self, step: int) -> int:
        """The longest sequence drawn at update ``step`` (1-based) under the length curriculum."""
        if self.grow <= 0 or step >= self.grow:
            return self.max_len
        return self.min_len + (self.max_len - self.min_len) * step // self.grow


@dataclass
class CopyResult:
    setup: CopySetup
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (update, loss bits, token accuracy)
    steps_to_95: int | None = None
    seconds: float = 0.0


def copy_batch(setup: CopySetup, gen: torch.Generator, longest: int | None = None) -> torch.Tensor:
    """``(batch, T)`` right-padded ``<s> x </s>`` rows of ``min_len`` to ``longest`` (default ``max_len``) tokens."""
    longest = setup.max_len if longest is None else longest
    lengths = torch.randint(setup.min_len, longest + 1, (setup.batch,), generator=gen)
    rows = torch.full((setup.batch, int(lengths.max()) + 2), PAD)
    weights = (torch.arange(1, setup.vocab + 1, dtype=torch.float) ** -setup.zipf if setup.zipf
               else torch.ones(setup.vocab))
    for i, n in enumerate(lengths.tolist()):
        rows[i, 0], rows[i, n + 1] = BOS, EOS
        rows[i, 1 : n + 1] = torch.multinomial(weights, n, replacement=True, generator=gen) + FIRST
    return rows


def shift_right(target: torch.Tensor) -> torch.Tensor:
    """fairseq's decoder input: ``</s>`` then the target without its last token; padding kept."""
    prev = torch.full_like(target, PAD)
    prev[:, 0] = EOS
    prev[:, 1:] = target[:, :-1]
    prev[target.eq(PAD)] = PAD
    return prev


def token_accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    keep = target.ne(PAD)
    return float((logits.argmax(-1).eq(target) & keep).sum() / keep.sum())


def run_copy_task(setup: CopySetup, eval_every: int = 25, log=None) -> CopyResult:
    """Train a fresh BART (dropout 0) on the copy task; accuracy is teacher-forced, on a fresh batch."""
    torch.manual_seed(setup.seed)
    cfg = BartConfig(vocab_size=setup.vocab + FIRST, embed_dim=setup.dim, ffn_dim=4 * setup.dim,
                     encoder_layers=setup.layers, decoder_layers=setup.layers, attention_heads=setup.heads,
                     max_positions=max(64, setup.max_len + 4), dropout=0.0, normalize_before=not setup.post_ln,
                     init_std=setup.init_std)
    model = BartModel(cfg)
    if setup.optimizer == "nvlamb":
        opt = NVLAMB(model.parameters(), lr=setup.lr, weight_decay=0.01)
    elif setup.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=setup.lr, betas=(0.9, 0.98))
    else:
        raise ValueError(f"optimizer must be adam or nvlamb (got {setup.optimizer!r})")
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / setup.warmup) * max(0.0, 1 - s / setup.steps))
    gen = torch.Generator().manual_seed(setup.seed + 1)
    result = CopyResult(setup)
    t0 = time.time()
    for step in range(1, setup.steps + 1):
        rows = copy_batch(setup, gen, setup.longest(step))
        logits = model(rows, shift_right(rows))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), rows.view(-1), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % eval_every == 0 or step == setup.steps:
            with torch.no_grad():
                rows = copy_batch(setup, gen)
                logits = model(rows, shift_right(rows))
                bits = float(F.cross_entropy(logits.view(-1, logits.size(-1)), rows.view(-1),
                                             ignore_index=PAD)) / math.log(2)
            acc = token_accuracy(logits, rows)
            result.curve.append((step, bits, acc))
            if log is not None:
                log(f"  update {step:>5}  {bits:6.2f} bits  accuracy {acc:.3f}  {time.time() - t0:5.0f}s")
            if acc >= 0.95 and result.steps_to_95 is None:
                result.steps_to_95 = step
                break
    result.seconds = time.time() - t0
    return result
