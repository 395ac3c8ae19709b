"""The compiled CPU passes of NVLAMB: built once and cached, optional, and equal to the PyTorch path."""
from __future__ import annotations


import pytest
import torch

from bart_ext import nvlamb_cpu
from bart_ext.nvlamb import NVLAMB, param_groups

needs_compiler = pytest.mark.skipif(nvlamb_cpu.load() is None, reason="no C compiler: the CPU kernel is not built")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no in-process memo."""
    monkeypatch.setenv("BART_EXT_CACHE", str(tmp_path))
    monkeypatch.setattr(nvlamb_cpu, "_loaded", {})
    return tmp_path


@needs_compiler
def test_compiled_once_then_reused_from_the_cache(fresh):
    assert nvlamb_cpu.load() is not None
    built = list(fresh.glob("nvlamb_cpu-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    nvlamb_cpu._loaded.clear()  # as a new process would
    assert nvlamb_cpu.load() is not None
    assert [p.stat().st_mtime_ns for p in fresh.glob("*.so")] == [stamp], "the cached library was rebuilt"
    assert not [p for p in fresh.iterdir() if p.suffix != ".so"], "a temporary file was left behind"


@pytest.mark.parametrize("env", [{"CC": "/nonexistent/cc"}, {"BART_EXT_NO_CPU_KERNEL": "1"}])
def test_without_a_compiler_nvlamb_takes_the_pytorch_path(fresh, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert nvlamb_cpu.load() is None
    p = torch.nn.Parameter(torch.randn(8, 6))
    opt = NVLAMB([p], lr=0.1)
    p.grad = torch.randn(8, 6)
    before = p.detach().clone()
    opt.step()
    assert opt.last_paths == ["fused"]
    assert not torch.equal(p.detach(), before)


def big_params():
    """Tensors large enough for the kernel's multi-threaded blocks (> 16,384 elements), one not a block multiple."""
    g = torch.Generator().manual_seed(3)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.05) for s in [(301, 257), (70001,), (64, 1024)]]


@needs_compiler
def test_large_tensors_match_the_pytorch_path_over_steps():
    a, b = big_params(), big_params()
    opt_a = NVLAMB(param_groups(a, 0.01), lr=0.01, cpu_kernel=True)
    opt_b = NVLAMB(param_groups(b, 0.01), lr=0.01, cpu_kernel=False)
    g = torch.Generator().manual_seed(4)
    for step in range(5):
        for pa, pb in zip(a, b):
            pa.grad = torch.randn(pa.shape, generator=g) * (1.0 if step % 2 else 1e-3)  # clipped, unclipped
            pb.grad = pa.grad.clone()
        opt_a.step()
        opt_b.step()
        assert opt_a.last_grad_norm == pytest.approx(opt_b.last_grad_norm, rel=1e-5)
        for pa, pb in zip(a, b):
            torch.testing.assert_close(pa.detach(), pb.detach(), rtol=1e-5, atol=1e-6)
    assert set(opt_a.last_paths) == {"cpu"} and set(opt_b.last_paths) == {"fused"}
    for pa, pb in zip(a, b):
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt_a.state[pa][k], opt_b.state[pb][k], rtol=1e-5, atol=1e-9)


@needs_compiler
def test_non_contiguous_parameters_fall_back():
    base = torch.randn(6, 8)
    p = torch.nn.Parameter(base.t())  # a transposed view: not contiguous
    assert not p.is_contiguous()
    opt = NVLAMB([p], lr=0.1)
    p.grad = torch.randn(8, 6)
    opt.step()
    assert opt.last_paths == ["fused"]
