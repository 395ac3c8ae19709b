"""scripts/bench_isa.py: the instruction-rate probe's arithmetic, and one short live run where the
CPU and a C compiler allow it."""
from __future__ import annotations

import shutil

import pytest

from bart_ext.hardware import cpu_flags
from scripts.bench_isa import NEEDED_FLAGS, measure, parse


def test_parse_turns_counts_into_per_core_rates():
    rates = parse("vfmadd231ps 2.0 4000000000 32 1.5\nvdpbf16ps 4.0 2000000000 64 -3\n")
    assert rates["vfmadd231ps"] == pytest.approx({"ginstr_per_s": 2.0, "gflops_per_core": 64.0})
    assert rates["vdpbf16ps"] == pytest.approx({"ginstr_per_s": 0.5, "gflops_per_core": 32.0})


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
@pytest.mark.skipif(not set(NEEDED_FLAGS) <= (cpu_flags() or set()), reason="no AVX512-BF16 on this CPU")
def test_probe_runs_and_reports_each_instruction():
    rates = measure(rounds=1, iters=200_000)
    assert {"vfmadd231ps", "vdpbf16ps"} <= set(rates)
    if "avx512_fp16" in cpu_flags():
        assert "vfmadd231ph" in rates
    for rate in rates.values():
        assert rate["ginstr_per_s"] > 0.05 and rate["gflops_per_core"] > 1.0
