"""bart_preln's dropout on the CPU: a counter-based (Threefry-2x32-20) mask from a compiled kernel."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bart_ext import dropout as cd

needs_kernel = pytest.mark.skipif(cd.load() is None, reason="no C compiler: the dropout kernel is not built")
M32 = 0xFFFFFFFF


def threefry2x32_py(counter, key):
    """Threefry-2x32-20 written out in Python from the paper's description (rotations, key schedule)."""
    rot = (13, 15, 26, 6, 17, 29, 16, 24)
    ks = (key[0], key[1], 0x1BD11BDA ^ key[0] ^ key[1])
    x0, x1 = (counter[0] + ks[0]) & M32, (counter[1] + ks[1]) & M32
    for r in range(20):
        x0 = (x0 + x1) & M32
        x1 = (((x1 << rot[r % 8]) | (x1 >> (32 - rot[r % 8]))) & M32) ^ x0
        if r % 4 == 3:
            s = r // 4 + 1
            x0 = (x0 + ks[s % 3]) & M32
            x1 = (x1 + ks[(s + 1) % 3] + s) & M32
    return x0, x1


# Random123's known answers for Threefry-2x32-20 (kat_vectors; the last also in JAX's tests).
KNOWN = [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
         ((M32, M32), (M32, M32), (0x1CB996FC, 0xBB002BE7)),
         ((0x243F6A88, 0x85A308D3), (0x13198A2E, 0x03707344), (0xC4923A9C, 0x483DF7A0))]


@pytest.mark.parametrize("counter,key,expected", KNOWN)
def test_threefry_known_answers(counter, key, expected):
    assert threefry2x32_py(counter, key) == expected
    if cd.load() is not None:
        assert cd.threefry2x32(counter, key) == expected


@needs_kernel
def test_each_element_is_kept_exactly_when_its_draw_clears_the_threshold():
    n, p, key = 100_003, 0.3, (0xDEADBEEF, 12345)  # odd: the last counter's second word unused
    y, bits = cd.apply_mask(torch.ones(n), p, key)
    threshold = round(p * 2**32)
    for i in list(range(0, 600)) + list(range(n - 600, n)) + list(range(40_000, 40_600)):
        draw = threefry2x32_py((i // 2, 0), key)[i % 2]
        assert bool(y[i] != 0) == (draw >= threshold), i
    assert torch.all((y == 0) | (y == torch.tensor(1 / (1 - p))))
    # the kept bits are the mask, element i at bit i % 8 of byte i // 8
    assert bits.numel() == (n + 7) // 8
    unpacked = ((bits.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).flatten()[:n]
    assert torch.equal(unpacked.bool(), y != 0)


@needs_kernel
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_rate_scale_and_independence(p):
    torch.manual_seed(0)
    x = torch.randn(1024, 1024)
    y = cd.dropout(x, p, True)
    dropped = y == 0
    sigma = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(dropped.float().mean().item() - p) < 5 * sigma
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p), rtol=1e-6, atol=0)
    # neighbours, and the next call's mask, are independent: both dropped at rate p^2
    flat = dropped.flatten()
    both = (flat[1:] & flat[:-1]).float().mean().item()
    assert abs(both - p * p) < 6 * (p * p * (1 - p * p) / x.numel()) ** 0.5
    again = cd.dropout(x, p, True) == 0
    assert not torch.equal(again, dropped)
    assert abs((again & dropped).float().mean().item() - p * p) < 6 * (p * p * (1 - p * p) / x.numel()) ** 0.5


@needs_kernel
def test_seeded_by_torch_and_the_same_for_any_number_of_threads():
    x = torch.randn(300, 1000)  # large enough for the kernel's threads
    threads = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2, 1):
            torch.set_num_threads(t)
            torch.manual_seed(7)
            outs.append(cd.dropout(x, 0.1, True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@needs_kernel
def test_backward_uses_the_mask_kept_as_bits():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)  # 2,112 elements: 264 bytes of bits

    def saved_bytes(fn):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = fn()
        return out, sum(t.numel() * t.element_size() for t in saved)

    y, ours = saved_bytes(lambda: cd.dropout(x, 0.25, True))
    _, torch_bytes = saved_bytes(lambda: F.dropout(x, 0.25, True))
    assert ours == 264 and torch_bytes >= 2112  # F.dropout keeps a bool mask of x's size
    g = torch.randn(64, 33)
    y.backward(g)
    kept = (y != 0).float()
    torch.testing.assert_close(x.grad, g * kept / 0.75, rtol=1e-6, atol=0)
    assert y.grad_fn is not None and "counter_dropout" in y.grad_fn.name()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 70001])  # the 16-wide steps, their tails, threads
@pytest.mark.parametrize("p", [0.1, 1 / 3])
def test_backward_kernel_is_the_masked_scaled_gradient_bit_for_bit(dtype, n, p):
    """``masked_gradient`` against PyTorch's ``where(kept, grad * scale, 0)``: the same bits (a
    dropped inf or NaN gives +0, as the scalar loop did; -0, subnormals and values that round
    to inf kept), a NaN wherever the reference has one. With p = 1/3 (scale 1.5) the values
    (1 + 2^-7) * 2^k times the scale lie halfway between two bf16 values: ties to even."""
    g = torch.Generator().manual_seed(n)
    grad = torch.randn(n, generator=g) * 10 ** torch.randint(-40, 39, (n,), generator=g).float()
    ties = (1 + 2**-7) * 2.0 ** torch.randint(-20, 20, (n,), generator=g).float()
    grad = torch.where(torch.rand(n, generator=g) < 0.3, ties * grad.sign(), grad)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-39, -1e-42,
                             3.3e38, -3.3e38, 1.0])
    grad[: min(n, len(specials))] = specials[: min(n, len(specials))]
    grad = grad.to(dtype)
    kept = torch.rand(n, generator=g) > 0.3
    kept[1::7] = False  # inf, -0 and 1e-39 among the dropped, nan and -inf among the kept (n >= 10)
    kept[::5] = True
    bits = torch.zeros((n + 7) // 8, dtype=torch.uint8)
    for byte in range((n + 7) // 8):
        chunk = kept[8 * byte : 8 * byte + 8]
        bits[byte] = int(sum(int(b) << i for i, b in enumerate(chunk.tolist())))
    out = cd.masked_gradient(grad, bits, p)
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)  # the kernel's float
    ref = torch.where(kept, grad.float() * scale, torch.zeros(())).to(dtype)
    assert out.dtype == dtype and out.shape == grad.shape
    nan = ref.isnan()
    assert torch.equal(out.isnan(), nan)
    as_int = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(out[~nan].view(as_int), ref[~nan].view(as_int))  # -0 and +0 told apart
    assert not out[~kept].view(as_int).any()  # dropped: +0, whatever the gradient was


@needs_kernel
def test_bf16_drops_the_elements_fp32_drops_and_rounds_like_torch():
    """Under --bf16-autocast the residual stream's dropout sees bf16 tensors: the same draws as fp32
    (so the precision test compares like with like), values rounded as PyTorch rounds."""
    x = torch.randn(300, 257)
    torch.manual_seed(6)
    y32 = cd.dropout(x, 0.1, True)
    xb = x.bfloat16().requires_grad_()
    torch.manual_seed(6)
    yb = cd.dropout(xb, 0.1, True)
    assert yb.dtype == torch.bfloat16 and cd.uses_kernel(xb, 0.1)
    kept = y32 != 0
    assert torch.equal(yb != 0, kept)
    assert torch.equal(yb, torch.where(kept, xb.detach().float() * (1 / 0.9), 0.0).bfloat16())
    g = torch.randn(300, 257).bfloat16()
    yb.backward(g)
    assert xb.grad.dtype == torch.bfloat16
    assert torch.equal(xb.grad, torch.where(kept, g.float() * (1 / 0.9), 0.0).bfloat16())


@needs_kernel
def test_non_contiguous_input():
    torch.manual_seed(2)
    x = torch.randn(40, 50).t()
    torch.manual_seed(3)
    y = cd.dropout(x, 0.2, True)
    torch.manual_seed(3)
    ref = cd.dropout(x.contiguous(), 0.2, True)
    assert torch.equal(y, ref)


def test_identity_when_off():
    x = torch.randn(5, 6)
    assert cd.dropout(x, 0.3, False) is x
    assert cd.dropout(x, 0.0, True) is x


@pytest.mark.parametrize("case", ["switch", "no kernel", "fp16", "p=1"])
def test_torch_dropout_where_the_kernel_does_not_apply(case, monkeypatch):
    x = torch.randn(50, 60)
    p = 0.2
    if case == "switch":
        monkeypatch.setenv("BART_EXT_DROPOUT", "torch")
    elif case == "no kernel":
        monkeypatch.setenv("BART_EXT_NO_CPU_KERNEL", "1")
    elif case == "fp16":
        x = x.half()
    else:
        p = 1.0
    assert not cd.uses_kernel(x, p)
    torch.manual_seed(4)
    y = cd.dropout(x, p, True)
    torch.manual_seed(4)
    assert torch.equal(y, F.dropout(x, p, True))


def test_an_unknown_switch_value_is_an_error(monkeypatch):
    monkeypatch.setenv("BART_EXT_DROPOUT", "fast")
    with pytest.raises(ValueError, match="BART_EXT_DROPOUT"):
        cd.dropout(torch.randn(3), 0.1, True)


@needs_kernel
def test_the_model_uses_it_and_its_training_step_is_reproducible():
    from bart_ext.model import BartConfig, EncoderLayer

    layer = EncoderLayer(BartConfig(vocab_size=40, embed_dim=16, ffn_dim=64, attention_heads=4, dropout=0.3)).train()
    x = torch.randn(3, 7, 16, requires_grad=True)
    grads = []
    for _ in range(2):
        torch.manual_seed(5)
        x.grad = None
        layer(x, None).sum().backward()
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])
    calls = []
    real = cd.apply_mask
    cd.apply_mask = lambda *a: calls.append(a[1]) or real(*a)
    try:
        layer(x, None)
    finally:
        cd.apply_mask = real
    assert calls == [0.3, 0.3]  # after self-attention and after the feed-forward sublayer


@needs_kernel
def test_compiled_code_calls_the_kernel_and_its_backward(monkeypatch):
    """Under torch.compile the custom operators run the kernel: the output is the input masked and
    scaled, and the gradient is the same mask and scale."""
    calls = []
    real = cd.apply_mask

    def counting(*args):
        calls.append(1)
        return real(*args)

    torch._dynamo.reset()
    cd.prepare_compile()  # as compile_layers does: no graph break at the kernel check
    explained = torch._dynamo.explain(lambda x: cd.dropout(x, 0.25, True))(torch.randn(8, 8, requires_grad=True))
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    monkeypatch.setattr(cd, "apply_mask", counting)
    f = torch.compile(lambda x: cd.dropout(x * 2, 0.25, True), dynamic=True)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(64, 96).to(dtype).requires_grad_()
        y = f(x)
        y.float().sum().backward()
        kept = y != 0
        assert 0.65 < kept.float().mean() < 0.85  # 0.75 kept
        torch.testing.assert_close(y[kept], (x * 2 / 0.75).to(dtype)[kept])
        torch.testing.assert_close(x.grad, torch.where(kept, 2 / 0.75, 0.0).to(dtype))
    assert len(calls) == 2
