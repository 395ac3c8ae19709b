"""``bart_ext.adam.Adam`` (``--optimizer bart_adam``) computes fairseq's ``adam`` update."""
from __future__ import annotations

import argparse
import copy

import pytest
import torch
from fairseq import optim
from fairseq.optim.adam import Adam as FairseqAdam

import user_dir  # noqa: F401  (registers bart_adam)
from bart_ext.adam import Adam

SHAPES = [(37, 5), (4099,), (3, 64, 7), (1,)]


def _params(dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]


def _train(opt, params, steps, seed=2, skip=(5, 1)):
    """``steps`` updates with gradients of varying scale; the tensor ``skip[1]`` has no gradient at step ``skip[0]``."""
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g) * 10.0 ** (-(i % 4))).to(p.dtype)
        if i == skip[0]:
            params[skip[1]].grad = None
        opt.step()


def _groups(params):
    return [{"params": params[:2]}, {"params": params[2:], "lr": 3e-3, "weight_decay": 0.0}]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_equals_fairseqs_adam_in_fp32(weight_decay):
    kw = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=weight_decay)
    ref, ours = _params(), _params()
    ref_opt, our_opt = FairseqAdam(_groups(ref), **kw), Adam(_groups(ours), **kw)
    _train(ref_opt, ref, 30)
    _train(our_opt, ours, 30)
    for r, o, s in zip(ref, ours, _params()):
        assert (r - s).abs().max() > 5e-3  # the parameters moved...
        torch.testing.assert_close(o, r, rtol=0, atol=2e-5)  # ...and the same way, up to fp32 rounding
    for r, o in zip(ref, ours):
        rs, os_ = ref_opt.state[r], our_opt.state[o]
        assert os_["step"] == rs["step"] and isinstance(os_["step"], int)
        torch.testing.assert_close(os_["exp_avg"], rs["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(os_["exp_avg_sq"], rs["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    assert our_opt.state[ours[1]]["step"] == 29  # the skipped step counts per tensor, as fairseq's


def test_bf16_parameters_take_the_fp32_path():
    kw = dict(lr=1e-2, eps=1e-8, weight_decay=0.01)
    ref, ours = _params(torch.bfloat16), _params(torch.bfloat16)
    _train(FairseqAdam(ref, **kw), ref, 20)
    _train(Adam(ours, **kw), ours, 20)
    for r, o in zip(ref, ours):
        assert o.dtype == torch.bfloat16
        torch.testing.assert_close(o.float(), r.float(), rtol=8e-3, atol=1e-5)  # within a bf16 rounding


@pytest.mark.parametrize("direction", ["fairseq_to_ours", "ours_to_fairseq"])
def test_optimizer_states_load_both_ways(direction):
    kw = dict(lr=1e-2, weight_decay=0.01)
    first, second = (FairseqAdam, Adam) if direction == "fairseq_to_ours" else (Adam, FairseqAdam)
    a = _params()
    opt_a = first(a, **kw)
    _train(opt_a, a, 6, seed=3)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_b = second(b, **kw)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as through a checkpoint file
    _train(opt_a, a, 6, seed=4, skip=(-1, 0))
    _train(opt_b, b, 6, seed=4, skip=(-1, 0))
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=0, atol=2e-5)
    assert [s["step"] for s in opt_b.state.values()] == [s["step"] for s in opt_a.state.values()] == [12, 11, 12, 12]


def test_sparse_gradients_and_bad_settings_are_refused():
    p = torch.nn.Parameter(torch.randn(5, 3))
    p.grad = torch.randn(5, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        Adam([p]).step()
    with pytest.raises(ValueError, match="betas"):
        Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        Adam([p], lr=-1.0)


def test_registered_as_bart_adam_with_fairseqs_adam_options():
    args = argparse.Namespace(optimizer="bart_adam", lr=[5e-4], adam_betas="(0.9, 0.98)", adam_eps=1e-6,
                              weight_decay=0.01)
    params = _params()
    opt = optim.build_optimizer(args, params)
    assert type(opt).__name__ == "FairseqBartAdam" and isinstance(opt.optimizer, Adam)
    group = opt.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-6 and group["weight_decay"] == 0.01
    assert group["lr"] == 5e-4
    bad = argparse.Namespace(**{**vars(args), "adam_betas": "(0.9,)"})
    with pytest.raises(ValueError, match="adam_betas must be two numbers"):
        optim.build_optimizer(bad, _params())
