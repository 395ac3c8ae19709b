"""scripts/bench_train.py --memory: the added peak a step's forward, loss and backward make, measured
in a fresh process whatever glibc settings the caller's environment holds."""
from __future__ import annotations

import argparse

import pytest

from scripts.bench_train import ROOT, peak_mib

DATA = ROOT / "data" / "aclsum" / "bin"  # `make test` prepares it


def test_memory_child_ignores_the_callers_glibc_settings(monkeypatch):
    """The README's tip for fairseq's criteria on a CPU (MALLOC_MMAP_MAX_=0 ...) keeps freed memory
    resident; inherited by the memory child, stock's fresh 50k-entry logits would land in pages the
    warm-up step left, and its added peak would read near zero."""
    if not (DATA / "dict.txt").exists():
        pytest.fail(f"{DATA} missing: `make test` prepares it (scripts/prepare_data.py)")
    args = argparse.Namespace(data=DATA, max_tokens=512)
    for key in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(key, raising=False)
    plain = peak_mib("stock", "tiny", args)
    # (tokens x 50,265) fp32 logits, their log-probabilities and gradients: hundreds of MiB
    assert plain > 100
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "68719476736")
    monkeypatch.setenv("MALLOC_TOP_PAD_", "268435456")
    tipped = peak_mib("stock", "tiny", args)
    assert tipped == pytest.approx(plain, rel=0.1)


def test_optimizer_memory_probe_ignores_the_callers_glibc_settings(monkeypatch):
    """scripts/bench_nvlamb.py's "+ in step" column: foreach AdamW's temporaries (one
    parameter-sized set, about 528 MiB on bart_base_preln's shapes) under the same tip."""
    from scripts.bench_nvlamb import memory_of

    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "68719476736")
    monkeypatch.setenv("MALLOC_TOP_PAD_", "268435456")
    mem = memory_of("adamw foreach")
    assert mem["transient_mib"] > 400 and abs(mem["persistent_mib"]) < 100, mem
