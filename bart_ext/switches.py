"""Every ``BART_EXT_*`` environment switch, defined and documented in one place (README, "Switches").

Each is read when it is used (``SWITCH.get()``), never cached at import, so a script or a test can
set it at run time. An unknown value is an error naming the variable and the values it takes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Switch:
    """One environment variable.

    Args:
        name: the variable.
        default: its value when unset or empty.
        choices: the values it may take (None: any string).
        help: what it does, for the README and error messages.
    """

    name: str
    default: str
    choices: tuple[str, ...] | None
    help: str

    def get(self) -> str:
        value = os.environ.get(self.name, "") or self.default
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name}={value!r}: expected one of {', '.join(self.choices)} ({self.help})")
        return value


TRUSTED_CHECKPOINTS = Switch(
    "BART_EXT_TRUSTED_CHECKPOINTS", "", None,
    "checkpoint files (separated by the OS path separator) unpickled in full, for files you trust that hold "
    "objects outside the weights-only allowlist")
NGRAM_BLOCK = Switch(
    "BART_EXT_NGRAM_BLOCK", "bart_ext", ("bart_ext", "fairseq_loop", "fairseq_stock"),
    "repeated n-gram blocking: bart_ext (on the generated prefix, on the device), fairseq_loop (fairseq's loop on "
    "that prefix), fairseq_stock (fairseq unchanged, which blocks nothing without its CUDA extension)")
GENERATOR = Switch(
    "BART_EXT_GENERATOR", "bart_ext", ("bart_ext", "fairseq"),
    "beam search of --task bart_summarization/bart_denoising: bart_ext's loop or fairseq's SequenceGenerator")
BEAM_SHARED = Switch(
    "BART_EXT_BEAM_SHARED", "1", ("0", "1"),
    "1: bart_preln keeps encoder states and cross-attention keys once per sentence under beam search; 0: per hypothesis")
CACHE = Switch(
    "BART_EXT_CACHE", "", None,
    "where the compiled CPU kernels (NVLAMB, dropout) are cached (default $XDG_CACHE_HOME/bart_ext or ~/.cache/bart_ext)")
NO_CPU_KERNEL = Switch(
    "BART_EXT_NO_CPU_KERNEL", "0", ("0", "1"),
    "1: NVLAMB and dropout use their PyTorch paths on the CPU instead of the compiled kernels")
ATTENTION = Switch(
    "BART_EXT_ATTENTION", "auto", ("auto", "mask", "packed"),
    "attention on padded batches in training and scoring: packed (variable-length nested tensors, which keep "
    "FlashAttention on GPUs), mask (a boolean mask), auto (packed on CUDA, mask elsewhere)")
ATTENTION_BACKWARD = Switch(
    "BART_EXT_ATTENTION_BACKWARD", "auto", ("auto", "torch"),
    "auto: bf16 attention on the CPU keeps SDPA's forward and computes its backward with batched matmuls "
    "(bart_ext/attention.py; 2-3x faster than SDPA's CPU backward); torch: SDPA's backward everywhere")

DROPOUT = Switch(
    "BART_EXT_DROPOUT", "auto", ("auto", "torch"),
    "auto: bart_preln's dropout on fp32 and bf16 CPU tensors draws its mask with the compiled counter-based kernel "
    "(bart_ext/dropout.py; 4-5x torch's bernoulli_); torch: torch's dropout everywhere")

BF16_GEMM = Switch(
    "BART_EXT_BF16_GEMM", "auto", ("auto", "torch"),
    "auto: under bf16 autocast on a CPU with bf16 matrix instructions, bart_preln's linear layers compute their weight "
    "gradients, and the fused loss its products, with MKL's bf16 x bf16 -> fp32 product (bart_ext/bf16_gemm.py; "
    "fp32 weight gradients, 1.5-2.5x PyTorch's bf16 products there); torch: PyTorch's autocast products everywhere")

CONSTRAINT_SCORES = Switch(
    "BART_EXT_CONSTRAINT_SCORES", "fairseq", ("fairseq", "renormalized"),
    "beam search of bart_ext's generator: fairseq (tokens ruled out by n-gram blocking or the minimum length get "
    "-inf after the log-softmax, fairseq's rule) or renormalized (the log-probabilities left are renormalised, as "
    "CTranslate2 scores them)")

ALL = (TRUSTED_CHECKPOINTS, NGRAM_BLOCK, GENERATOR, BEAM_SHARED, CACHE, NO_CPU_KERNEL, ATTENTION, ATTENTION_BACKWARD, DROPOUT,
       BF16_GEMM, CONSTRAINT_SCORES)
