"""MKL's bf16 x bf16 -> fp32 product, and bart_preln's linear layers and feed-forward sublayers on it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bart_ext import bf16_gemm
from bart_ext.bf16_gemm import Linear, gemm
from bart_ext.model import BartConfig, BartModel, EncoderLayer, compile_layers
from tests.helpers import bf16_gemm_mode

pytestmark = pytest.mark.skipif(not bf16_gemm.available(), reason="no MKL bf16 product in this PyTorch build")


def _bf16(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16()


def _exact(a, b):
    return a.double() @ b.double()


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_products_equal_the_exact_ones_of_the_bf16_operands(ta, tb, beta):
    """Every layout (transposed views included), written into rows wider than the output (a view into
    a padded buffer, as the fused loss passes), with and without accumulation."""
    m, k, n = 37, 70, 45
    a = _bf16(k, m, seed=1).t() if ta else _bf16(m, k, seed=1)
    b = _bf16(n, k, seed=2).t() if tb else _bf16(k, n, seed=2)
    buf = torch.randn(m, n + 3, generator=torch.Generator().manual_seed(3))
    out, before = buf[:, :n], buf.clone()
    gemm(a, b, out, beta=beta)
    want = _exact(a, b) + beta * before[:, :n].double()
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-5)
    assert torch.equal(buf[:, n:], before[:, n:])  # the padding is not written


def test_strided_operands_and_empty_shapes():
    a = _bf16(20, 30, seed=4)[:, ::2]  # no unit stride: copied first
    b = _bf16(15, 9, seed=5)
    out = torch.empty(20, 9)
    torch.testing.assert_close(gemm(a, b, out).double(), _exact(a, b), rtol=1e-6, atol=1e-5)
    acc = torch.ones(3, 4)
    gemm(_bf16(3, 0), _bf16(0, 4), acc, beta=0.5)  # k = 0: out = beta * out
    assert torch.equal(acc, torch.full((3, 4), 0.5))
    gemm(_bf16(3, 0), _bf16(0, 4), acc)
    assert torch.equal(acc, torch.zeros(3, 4))
    gemm(_bf16(0, 5), _bf16(5, 4), torch.empty(0, 4))  # nothing to do


def test_bad_operands_are_named():
    with pytest.raises(ValueError, match="bf16 @ bf16 -> fp32"):
        gemm(torch.randn(2, 3), _bf16(3, 4), torch.empty(2, 4))
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(4, 4\)"):
        gemm(_bf16(2, 3), _bf16(4, 4), torch.empty(2, 4))
    with pytest.raises(ValueError, match="unit stride"):
        gemm(_bf16(2, 3), _bf16(3, 4), torch.empty(4, 2).t())


def _linear_step(layer, x, mode, monkeypatch, autocast=True):
    bf16_gemm_mode(monkeypatch, mode)
    layer.zero_grad(set_to_none=True)
    x.grad = None
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(9)).to(y.dtype))
    return y.detach(), x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()


def test_linear_keeps_autocasts_output_and_input_gradient_and_makes_the_weights_fp32_exact(monkeypatch):
    """The same bf16 output and input gradient as nn.Linear under autocast, bit for bit; the weight's
    and bias' gradients are the exact sums of the bf16 products (fp32), where autocast's are rounded to
    bf16."""
    torch.manual_seed(0)
    layer = Linear(48, 40)
    x = torch.randn(3, 17, 48, requires_grad=True)
    y, gx, gw, gb = _linear_step(layer, x, "mkl", monkeypatch)
    y_ref, gx_ref, gw_ref, gb_ref = _linear_step(layer, x, "torch", monkeypatch)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    assert gx.dtype == torch.float32 and torch.equal(gx, gx_ref)
    assert gw.dtype == gb.dtype == torch.float32
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)).bfloat16().double().reshape(-1, 40)
    xb = x.detach().bfloat16().double().reshape(-1, 48)
    exact_w, exact_b = g.t() @ xb, g.sum(0)
    torch.testing.assert_close(gw.double(), exact_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb.double(), exact_b, rtol=1e-5, atol=1e-5)
    assert (gw_ref.double() - exact_w).norm() > 10 * (gw.double() - exact_w).norm()  # autocast's bf16 rounding


@pytest.mark.parametrize("case", ["no autocast", "torch switch", "no grad", "bf16 weights"])
def test_linear_is_nn_linear_elsewhere(monkeypatch, case):
    torch.manual_seed(0)
    layer = Linear(8, 6)
    ref = torch.nn.Linear(8, 6)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(5, 8)
    if case == "bf16 weights":
        layer, ref, x = layer.bfloat16(), ref.bfloat16(), x.bfloat16()
    bf16_gemm_mode(monkeypatch, "torch" if case == "torch switch" else "mkl")
    calls = []
    monkeypatch.setattr(bf16_gemm, "_weight_grad", lambda *a: calls.append(1))
    with torch.set_grad_enabled(case != "no grad"), torch.autocast("cpu", torch.bfloat16, enabled=case != "no autocast"):
        out, want = layer(x), ref(x)
        if out.requires_grad:
            out.float().sum().backward()
    assert torch.equal(out, want) and not calls
    assert list(layer.state_dict()) == ["weight", "bias"]


def test_the_feed_forward_sublayer_uses_it_with_the_plain_compositions_results(monkeypatch):
    """fc2 inside the gelu-recomputing sublayer (_GeluLinear) takes the same fp32 weight gradient as a
    plain fc2(gelu(fc1(x))) on Linear: outputs and every gradient bit-equal."""
    bf16_gemm_mode(monkeypatch, "mkl")
    torch.manual_seed(0)
    layer = EncoderLayer(BartConfig(vocab_size=40, embed_dim=16, ffn_dim=64, attention_heads=4, dropout=0.0))
    x = torch.randn(3, 10, 16, requires_grad=True)
    calls = []
    real = bf16_gemm._weight_grad
    monkeypatch.setattr(bf16_gemm, "_weight_grad", lambda g, i: calls.append(tuple(g.shape)) or real(g, i))

    def run(plain):
        layer.zero_grad()
        x.grad = None
        with torch.autocast("cpu", torch.bfloat16):
            out = layer.fc2(F.gelu(layer.fc1(x))) if plain else layer.ffn(x)
        out.float().square().sum().backward()
        return [out.detach(), x.grad.clone()] + [p.grad.clone() for p in (layer.fc1.weight, layer.fc1.bias,
                                                                        layer.fc2.weight, layer.fc2.bias)]

    for got, want in zip(run(False), run(True)):
        assert torch.equal(got, want)
    assert calls == [(30, 16), (30, 64)] * 2  # fc2's and fc1's weight gradients, in each run


def test_the_operators_pass_torchs_opcheck():
    g, x = _bf16(12, 8, seed=1), _bf16(12, 5, seed=2)
    torch.library.opcheck(bf16_gemm.weight_grad, (g, x))
    torch.library.opcheck(bf16_gemm.column_sums, (g,))
    w = torch.randn(6, 5, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    torch.library.opcheck(bf16_gemm._linear_op, (x.requires_grad_(), w, b), test_utils=("test_schema", "test_faketensor"))


def test_compiled_layers_take_it_and_match_eager(monkeypatch):
    """``--compile`` with MKL on: the compiled layers call the custom operators (weight gradients of
    every linear layer) and give eager's gradients."""
    bf16_gemm_mode(monkeypatch, "mkl")
    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=40, embed_dim=24, ffn_dim=36, encoder_layers=1, decoder_layers=1,
                     attention_heads=2, dropout=0.0)
    model = BartModel(cfg)
    src, tgt = torch.randint(4, 40, (3, 11)), torch.randint(4, 40, (3, 9))

    def grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(src, tgt).float().logsumexp(-1).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    calls = []
    real = bf16_gemm._weight_grad
    monkeypatch.setattr(bf16_gemm, "_weight_grad", lambda g, i: calls.append(1) or real(g, i))
    eager = grads()
    linears = sum(isinstance(m, Linear) for m in model.modules())
    # eager groups q, k and v of each self-attention and k, v of the cross-attention (bf16_gemm.linears)
    assert len(calls) == linears - 2 - 2 - 1
    torch._dynamo.reset()
    compile_layers(model)
    calls.clear()
    compiled = grads()
    assert len(calls) == linears  # compiled layers call each projection's own operator
    for name, g in eager.items():
        assert compiled[name].dtype == torch.float32
        if name.endswith("k_proj.bias"):
            continue  # 0 in exact arithmetic (softmax is shift-invariant)
        assert float((compiled[name] - g).norm() / g.norm()) < 2e-2, name


def test_grouped_projections_equal_the_layers_own(monkeypatch):
    """``linears``: q, k and v of one input as one product over the stacked weights give each layer's
    own bf16 output bit for bit and the same fp32 weight and bias gradients; the input's gradient
    (the three contributions summed inside one product) equals the separate layers' to bf16 rounding."""
    bf16_gemm_mode(monkeypatch, "mkl")
    torch.manual_seed(0)
    layers = [Linear(32, 32) for _ in range(3)]
    x = torch.randn(2, 7, 32, requires_grad=True)
    grads_out = [torch.randn(2, 7, 32).bfloat16() for _ in layers]

    def run(grouped):
        for layer in layers:
            layer.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cpu", torch.bfloat16):
            outs = bf16_gemm.linears(x, layers) if grouped else [layer(x) for layer in layers]
        torch.autograd.backward(outs, grads_out)
        return outs, x.grad, [(layer.weight.grad, layer.bias.grad) for layer in layers]

    calls = []
    real = bf16_gemm._weight_grad
    monkeypatch.setattr(bf16_gemm, "_weight_grad", lambda g, i: calls.append(tuple(g.shape)) or real(g, i))
    outs, gx, gwb = run(True)
    assert calls == [(14, 96)]  # one weight-gradient product for the three layers
    ref_outs, ref_gx, ref_gwb = run(False)
    for a, b in zip(outs, ref_outs):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)
    torch.testing.assert_close(gx, ref_gx, rtol=2e-2, atol=2e-2)
    for (w, b), (rw, rb) in zip(gwb, ref_gwb):
        assert w.dtype == torch.float32
        torch.testing.assert_close(w, rw, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, rb, rtol=1e-5, atol=1e-6)
    bf16_gemm_mode(monkeypatch, "torch")  # elsewhere: the layers one by one
    calls.clear()
    with torch.autocast("cpu", torch.bfloat16):
        assert all(torch.equal(a, b) for a, b in zip(bf16_gemm.linears(x, layers), [layer(x) for layer in layers]))
