"""NVLAMB against a readable per-tensor reference of its six steps (float64), plus its edge behaviour."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from bart_ext import nvlamb_cpu
from bart_ext.nvlamb import NVLAMB, no_decay, param_groups


def reference_step(ws, gs, state, lr, betas, eps, wds, max_norm, use_nvlamb, bias_correction=True):
    """The algorithm as written in the issue, one tensor at a time."""
    norm = math.sqrt(sum(float((g * g).sum()) for g in gs))
    if not math.isfinite(norm):
        return
    clip = max_norm / norm if max_norm > 0 and norm > max_norm else 1.0
    state["t"] += 1
    t = state["t"]
    b1, b2 = betas
    for i, (w, g, wd) in enumerate(zip(ws, gs, wds)):
        g = g * clip
        state["m"][i] = b1 * state["m"][i] + (1 - b1) * g
        state["v"][i] = b2 * state["v"][i] + (1 - b2) * g * g
        m_hat = state["m"][i] / (1 - b1**t) if bias_correction else state["m"][i]
        v_hat = state["v"][i] / (1 - b2**t) if bias_correction else state["v"][i]
        u = m_hat / (v_hat.sqrt() + eps) + wd * w
        r = 1.0
        if use_nvlamb or wd != 0:
            w_norm, u_norm = float(w.norm()), float(u.norm())
            r = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        w.sub_(lr * r * u)


def make_params(dtype=torch.float64):
    torch.manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(12, 14, dtype=torch.float64).to(dtype)),  # decayed matrix
        torch.nn.Parameter(torch.randn(14, dtype=torch.float64).to(dtype)),  # no-decay (bias / LayerNorm)
        torch.nn.Parameter(torch.zeros(5, 7, dtype=dtype)),  # zero tensor: r = 1
        torch.nn.Parameter((torch.randn(7, 5, dtype=torch.float64) * 3).to(dtype)),
    ]


def grads_for(step, params):
    g = torch.Generator().manual_seed(100 + step)
    scale = 10.0 if step % 3 == 0 else 0.01  # some steps clipped, some not
    return [torch.randn(p.shape, generator=g, dtype=torch.float64) * scale for p in params]


# float64 exercises the multi-tensor path exactly; float32 the fused-AdamW path and the
# compiled CPU passes, to fp32 rounding.
PATHS = {"foreach": (torch.float64, 1e-12, True), "fused": (torch.float32, 2e-5, False),
         "cpu kernel": (torch.float32, 2e-5, True)}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("use_nvlamb", [True, False])
def test_matches_reference_step_by_step(use_nvlamb, path):
    dtype, tol, cpu_kernel = PATHS[path]
    if path == "cpu kernel" and nvlamb_cpu.load() is None:
        pytest.skip("no C compiler: the CPU kernel is not built")
    params = make_params(dtype)
    ref_w = [p.detach().double().clone() for p in params]
    groups = param_groups(params, weight_decay=0.01)
    opt = NVLAMB(groups, lr=0.02, betas=(0.9, 0.999), eps=1e-6, max_grad_norm=1.0, use_nvlamb=use_nvlamb,
                 cpu_kernel=cpu_kernel)
    wds = [0.0 if no_decay(p) else 0.01 for p in params]
    state = {"t": 0, "m": [torch.zeros_like(w) for w in ref_w], "v": [torch.zeros_like(w) for w in ref_w]}
    clipped = 0
    for step in range(10):
        gs = grads_for(step, params)
        for p, g in zip(params, gs):
            p.grad = g.to(dtype).clone()  # the optimizer may scale p.grad in place (clipping)
        opt.step()
        clipped += opt.last_grad_norm > 1.0
        # the reference takes the same (rounded) gradients, in float64
        reference_step(ref_w, [g.to(dtype).double() for g in gs], state, 0.02, (0.9, 0.999), 1e-6, wds, 1.0,
                       use_nvlamb)
        for p, w in zip(params, ref_w):
            torch.testing.assert_close(p.detach().double(), w, atol=tol, rtol=tol)
    assert clipped >= 3 and clipped < 10
    assert set(opt.last_paths) == {{"foreach": "foreach", "fused": "fused", "cpu kernel": "cpu"}[path]}
    assert bool(opt.scratch) == (path == "fused"), "only the fused-AdamW path keeps a scratch buffer"
    assert all(set(st) == {"step", "exp_avg", "exp_avg_sq"} for st in opt.state.values())
    assert params[2].abs().sum() > 0  # the zero tensor moved (r = 1)


@pytest.mark.parametrize("path", ["foreach", "cpu kernel"])
def test_without_bias_correction_every_path_matches_the_reference(path):
    """``bias_correction=False`` (moments used as they are): the fused-AdamW path cannot do it (its
    kernel always corrects), so fp32 groups on a GPU take the multi-tensor path instead."""
    dtype, tol, cpu_kernel = PATHS[path]
    if path == "cpu kernel" and nvlamb_cpu.load() is None:
        pytest.skip("no C compiler: the CPU kernel is not built")
    params = make_params(dtype)
    ref_w = [p.detach().double().clone() for p in params]
    opt = NVLAMB(param_groups(params, weight_decay=0.01), lr=0.02, max_grad_norm=1.0, bias_correction=False,
                 cpu_kernel=cpu_kernel)
    wds = [0.0 if no_decay(p) else 0.01 for p in params]
    state = {"t": 0, "m": [torch.zeros_like(w) for w in ref_w], "v": [torch.zeros_like(w) for w in ref_w]}
    for step in range(4):
        gs = grads_for(step, params)
        for p, g in zip(params, gs):
            p.grad = g.to(dtype).clone()
        opt.step()
        reference_step(ref_w, [g.to(dtype).double() for g in gs], state, 0.02, (0.9, 0.999), 1e-6, wds, 1.0,
                       True, bias_correction=False)
        for p, w in zip(params, ref_w):
            torch.testing.assert_close(p.detach().double(), w, atol=tol, rtol=tol)
    assert set(opt.last_paths) == {{"foreach": "foreach", "cpu kernel": "cpu"}[path]}
    # an fp32 group that would take the fused path without the CPU kernel takes the multi-tensor one
    params32 = make_params(torch.float32)
    opt32 = NVLAMB(param_groups(params32, 0.01), lr=0.02, bias_correction=False, cpu_kernel=False)
    for p, g in zip(params32, grads_for(1, params32)):
        p.grad = g.float()
    opt32.step()
    assert set(opt32.last_paths) == {"foreach"} and not opt32.scratch


def test_use_nvlamb_changes_only_tensors_without_weight_decay():
    runs = {}
    for flag in (True, False):
        params = make_params()
        train(params, NVLAMB(param_groups(params, 0.01), lr=0.02, use_nvlamb=flag), range(4))
        runs[flag] = params
    for i, p in enumerate(make_params()):
        same = torch.equal(runs[True][i].detach(), runs[False][i].detach())
        assert same == (not no_decay(p)), i


# float32 on the CPU takes the compiled kernel (where a compiler exists), float64 the multi-tensor path
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_overflow_step_is_skipped_and_touches_nothing(dtype):
    params = make_params(dtype)
    opt = NVLAMB(param_groups(params, 0.01), lr=0.02)
    train(params, opt, [1])
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict())
    grads = grads_for(2, params)
    grads[1][3] = float("inf")
    grads[0][0, 0] = float("nan")
    for p, g in zip(params, grads):
        p.grad = g.to(dtype)
    opt.step()
    assert opt.skipped_steps == 1 and not math.isfinite(opt.last_grad_norm)
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    after = opt.state_dict()
    for k, s in state["state"].items():
        assert after["state"][k]["step"] == s["step"]
        assert torch.equal(after["state"][k]["exp_avg"], s["exp_avg"])


def train(params, opt, steps):
    for step in steps:
        for p, g in zip(params, grads_for(step, params)):
            p.grad = g.to(device=p.device, dtype=p.dtype).clone()  # the grads are made on the CPU
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_state_dict_resume_continues_exactly(dtype):
    straight = make_params(dtype)
    train(straight, NVLAMB(param_groups(straight, 0.01), lr=0.02), range(8))

    first = make_params(dtype)
    opt1 = NVLAMB(param_groups(first, 0.01), lr=0.02)
    train(first, opt1, range(4))
    saved = copy.deepcopy(opt1.state_dict())
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt2 = NVLAMB(param_groups(resumed, 0.01), lr=0.02)
    opt2.load_state_dict(saved)
    train(resumed, opt2, range(4, 8))
    for a, b in zip(straight, resumed):
        assert torch.equal(a.detach(), b.detach())


def test_low_precision_parameters_keep_fp32_state():
    p = torch.nn.Parameter(torch.randn(6, 4).to(torch.bfloat16))
    opt = NVLAMB([p], lr=0.01)
    p.grad = torch.randn(6, 4).to(torch.bfloat16)
    before = p.detach().clone()
    opt.step()
    st = opt.state[p]
    assert st["exp_avg"].dtype == torch.float32 and st["exp_avg_sq"].dtype == torch.float32
    assert p.dtype == torch.bfloat16 and not torch.equal(p.detach(), before)


def test_no_decay_rule_on_the_model_names_biases_and_layer_norms_only():
    from bart_ext.model import BartConfig, BartModel

    model = BartModel(BartConfig(vocab_size=40, embed_dim=12, ffn_dim=14, attention_heads=3, encoder_layers=1,
                                 decoder_layers=1))
    for name, p in model.named_parameters():
        by_name = name.endswith(".bias") or "layer_norm" in name or "layernorm" in name
        assert no_decay(p) == by_name, name


@pytest.mark.cuda  # and apex (skipped without it)
def test_agrees_with_apex_fused_lamb():
    apex = pytest.importorskip("apex.optimizers")
    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(64, 48, device="cuda")), torch.nn.Parameter(torch.randn(48, device="cuda"))]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    a = apex.FusedLAMB([{"params": [ref[0]], "weight_decay": 0.01}, {"params": [ref[1]], "weight_decay": 0.0}],
                       lr=0.01, use_nvlamb=True, max_grad_norm=1.0)
    b = NVLAMB(param_groups(ours, 0.01), lr=0.01, use_nvlamb=True, max_grad_norm=1.0)
    for step in range(5):
        gs = [torch.randn_like(p) for p in ref]
        for p, q, g in zip(ref, ours, gs):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    for p, q in zip(ref, ours):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5)


def test_flattened_fp16_is_refused_with_a_pointer(monkeypatch):
    """One flat fp32 copy of all parameters would make the trust ratio global: fairseq must refuse.

    fairseq's flattened FP16Optimizer asks CUDA for the device; only that call is stubbed on the CPU.
    """
    from fairseq.optim.fp16_optimizer import FP16Optimizer
    from omegaconf import OmegaConf

    import user_dir  # noqa: F401
    from user_dir.nvlamb import NVLAMBConfig

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cfg = OmegaConf.create({"common": {"fp16_no_flatten_grads": False},
                            "optimizer": OmegaConf.structured(NVLAMBConfig(_name="nvlamb", lr=[0.01]))})
    params = [torch.nn.Parameter(torch.randn(4, 3).half()), torch.nn.Parameter(torch.randn(3).half())]
    with pytest.raises(RuntimeError, match="fp16-no-flatten-grads"):
        FP16Optimizer.build_optimizer(cfg, params)


def _reference_per_tensor(ws, gs, state, lr, wds, max_norm=1.0, betas=(0.9, 0.999), eps=1e-6):
    """The reference step where each tensor counts its own steps and a tensor without a gradient
    (``None``) sits the step out."""
    present = [g for g in gs if g is not None]
    norm = math.sqrt(sum(float((g * g).sum()) for g in present))
    if not math.isfinite(norm):
        return
    clip = max_norm / norm if max_norm > 0 and norm > max_norm else 1.0
    b1, b2 = betas
    for i, (w, g, wd) in enumerate(zip(ws, gs, wds)):
        if g is None:
            continue
        state["t"][i] += 1
        t = state["t"][i]
        g = g * clip
        state["m"][i] = b1 * state["m"][i] + (1 - b1) * g
        state["v"][i] = b2 * state["v"][i] + (1 - b2) * g * g
        u = (state["m"][i] / (1 - b1**t)) / ((state["v"][i] / (1 - b2**t)).sqrt() + eps) + wd * w
        w_norm, u_norm = float(w.norm()), float(u.norm())
        w.sub_(lr * (w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0) * u)


@pytest.mark.parametrize("path", list(PATHS))
def test_every_path_counts_steps_per_tensor_through_skips_and_a_resume(path):
    _count_steps_through_skips_and_a_resume(path, "cpu")


@pytest.mark.cuda
def test_fused_path_on_cuda_counts_steps_per_tensor_through_skips_and_a_resume():
    _count_steps_through_skips_and_a_resume("fused", "cuda")


def _count_steps_through_skips_and_a_resume(path, device):
    dtype, tol, cpu_kernel = PATHS[path]
    if path == "cpu kernel" and nvlamb_cpu.load() is None:
        pytest.skip("no C compiler: the CPU kernel is not built")
    params = [torch.nn.Parameter(p.detach().to(device)) for p in make_params(dtype)]
    ref_w = [p.detach().double().cpu().clone() for p in params]
    wds = [0.0 if no_decay(p) else 0.01 for p in params]
    state = {"t": [0] * 4, "m": [torch.zeros_like(w) for w in ref_w], "v": [torch.zeros_like(w) for w in ref_w]}

    def opt_for(ps):
        return NVLAMB(param_groups(ps, weight_decay=0.01), lr=0.02, cpu_kernel=cpu_kernel)

    opt = opt_for(params)
    for step in range(8):
        gs = grads_for(step, params)
        if step in (1, 4):
            gs[1] = None  # the bias has no gradient this step: its count must not advance
        if step == 3:
            gs[0] = gs[0].clone()
            gs[0][0, 0] = math.inf  # overflow: the whole step is skipped
        if step == 5:  # resume: a new optimizer from the saved state, steps saved as plain numbers
            saved = copy.deepcopy(opt.state_dict())
            for st in saved["state"].values():
                st["step"] = int(st["step"])
            saved = {"state": {k: {n: v.cpu() if torch.is_tensor(v) else v for n, v in st.items()}
                               for k, st in saved["state"].items()},
                     "param_groups": saved["param_groups"]}  # as fairseq loads it: on the CPU
            params = [torch.nn.Parameter(p.detach().clone()) for p in params]
            opt = opt_for(params)
            opt.load_state_dict(saved)
            assert all(st["step"].dtype == p.dtype and st["step"].device == p.device
                       for p, st in ((p, opt.state[p]) for p in params))
        for p, g in zip(params, gs):
            p.grad = None if g is None else g.to(dtype).to(device).clone()
        opt.step()
        _reference_per_tensor(ref_w, [None if g is None else g.to(dtype).double() for g in gs], state, 0.02, wds)
        for p, w in zip(params, ref_w):
            torch.testing.assert_close(p.detach().double().cpu(), w, atol=tol, rtol=tol)
    assert [int(opt.state[p]["step"]) for p in params] == state["t"] == [7, 5, 7, 7]
    assert set(opt.last_paths) == {{"foreach": "foreach", "fused": "fused", "cpu kernel": "cpu"}[path]}


@pytest.mark.cuda
def test_resume_on_cuda_from_a_cpu_read_checkpoint():
    params = [torch.nn.Parameter(p.detach().cuda()) for p in make_params(torch.float32)]
    opt = NVLAMB(param_groups(params, 0.01), lr=0.02)
    train(params, opt, range(2))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, map_location="cpu")  # as fairseq reads checkpoints
    opt2 = NVLAMB(param_groups(params, 0.01), lr=0.02)
    opt2.load_state_dict(saved)
    assert all(st["step"].is_cuda for st in opt2.state.values())
    train(params, opt2, range(2, 3))  # the fused path takes the step without a device error
    assert opt2.last_paths == ["fused"] * len(opt2.param_groups)



@pytest.mark.parametrize("path", list(PATHS))
def test_after_a_clipped_step_every_path_leaves_the_clipped_gradients(path):
    dtype, _, cpu_kernel = PATHS[path]
    if path == "cpu kernel" and nvlamb_cpu.load() is None:
        pytest.skip("no C compiler: the CPU kernel is not built")
    params = make_params(dtype)
    opt = NVLAMB(param_groups(params, 0.01), lr=0.02, max_grad_norm=1.0, cpu_kernel=cpu_kernel)
    for step in (0, 1):  # step 0 is clipped (gradients x 10), step 1 is not
        gs = [g.to(dtype) for g in grads_for(step, params)]
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        norm = opt.last_grad_norm
        clipped = norm > 1.0
        assert clipped == (step == 0)
        for p, g in zip(params, gs):
            want = g / torch.tensor(norm / 1.0, dtype=torch.float32) if clipped else g
            assert torch.equal(p.grad, want.to(dtype)), (path, step)
    assert set(opt.last_paths) == {{"foreach": "foreach", "fused": "fused", "cpu kernel": "cpu"}[path]}


@pytest.mark.cuda
def test_fused_path_on_cuda_leaves_the_clipped_gradients():
    """CUDA's fused AdamW kernel writes grad / grad_scale back into p.grad; NVLAMB must leave the
    clipped gradients there, as its other paths do."""
    params = [torch.nn.Parameter(p.detach().cuda()) for p in make_params(torch.float32)]
    opt = NVLAMB(param_groups(params, 0.01), lr=0.02, max_grad_norm=1.0)
    gs = [g.float().cuda() for g in grads_for(0, params)]  # step 0 is clipped
    for p, g in zip(params, gs):
        p.grad = g.clone()
    opt.step()
    assert opt.last_paths == ["fused"] * len(opt.param_groups)
    norm = opt.last_grad_norm
    assert norm > 1.0
    for p, g in zip(params, gs):
        torch.testing.assert_close(p.grad, g / norm, atol=1e-7, rtol=1e-6)
