"""The chunked fused projection + loss equals fairseq's criteria: loss, logged values, every gradient."""
from __future__ import annotations

import types

import pytest
import torch
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from bart_ext.adapters.fairseq_criteria import output_weight
from bart_ext.losses import auto_chunk_tokens, fused_linear_cross_entropy, reference_linear_cross_entropy
from bart_ext.losses.chunked import _count_correct, _padded_row, add_through
from bart_ext import bf16_gemm
from tests.helpers import bf16_gemm_mode, dictionary, fake_task, preln_args
from tests.unit.test_model import batch, fairseq_bart
from user_dir.bart_cross_entropy import BartCrossEntropy
from user_dir.bart_label_smoothed_cross_entropy import BartLabelSmoothedCrossEntropy
from user_dir.bart_preln import BartPreln

PAD = 1


def _inputs(n=37, width=14, vocab=29, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, width, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, width, generator=g, dtype=dtype, requires_grad=True)
    target = torch.randint(0, vocab, (n,), generator=g)
    target[::5] = PAD
    return hidden, weight, target


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [1, 8, 0, 1000])
def test_equals_the_unfused_loss_and_gradients_in_fp64(eps, chunk):
    hidden, weight, target = _inputs()
    loss, nll, n_correct = fused_linear_cross_entropy(hidden, weight, target, ignore_index=PAD,
                                                      label_smoothing=eps, chunk_tokens=chunk)
    grads = torch.autograd.grad(3.0 * loss, (hidden, weight))
    ref_loss, ref_nll = reference_linear_cross_entropy(hidden, weight, target, ignore_index=PAD, label_smoothing=eps)
    ref_grads = torch.autograd.grad(3.0 * ref_loss, (hidden, weight))
    torch.testing.assert_close(loss, ref_loss, atol=1e-10, rtol=1e-12)
    torch.testing.assert_close(nll, ref_nll, atol=1e-10, rtol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    keep = target.ne(PAD)
    assert int(n_correct) == int(((hidden @ weight.t()).argmax(-1).eq(target) & keep).sum())
    assert grads[0][~keep].abs().max() == 0  # padding contributes nothing
    # without the count (criteria that do not report accuracy): the same loss and gradients, count 0
    loss2, nll2, none = fused_linear_cross_entropy(hidden, weight, target, ignore_index=PAD, label_smoothing=eps,
                                                   chunk_tokens=chunk, count_correct=False)
    assert torch.equal(loss2, loss) and torch.equal(nll2, nll) and int(none) == 0 < int(n_correct)
    for got, want in zip(torch.autograd.grad(3.0 * loss2, (hidden, weight)), grads):
        assert torch.equal(got, want)


def test_gradcheck():
    hidden, weight, target = _inputs(n=9, width=5, vocab=7)
    fn = lambda h, w: fused_linear_cross_entropy(h, w, target, ignore_index=PAD, label_smoothing=0.1,  # noqa: E731
                                                 chunk_tokens=4)[0]
    assert torch.autograd.gradcheck(fn, (hidden, weight))


def test_bf16_autocast_matmuls_in_bf16_log_sum_exp_in_fp32(monkeypatch):
    bf16_gemm_mode(monkeypatch, "torch")
    hidden, weight, target = _inputs(n=64, width=32, vocab=300, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, nll, _ = fused_linear_cross_entropy(hidden, weight, target, ignore_index=PAD, label_smoothing=0.1,
                                                  chunk_tokens=16)
        ref_loss, ref_nll = reference_linear_cross_entropy(hidden, weight, target, ignore_index=PAD,
                                                           label_smoothing=0.1)
    assert loss.dtype == nll.dtype == ref_loss.dtype == torch.float32
    # both take bf16 logits into an fp32 log-softmax: equal up to summation order
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-3)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    assert gh.dtype == gw.dtype == torch.float32
    fp32_loss, _ = reference_linear_cross_entropy(hidden, weight, target, ignore_index=PAD, label_smoothing=0.1)
    assert abs(float(loss.detach()) - float(fp32_loss.detach())) / float(fp32_loss) < 0.02  # bf16 rounding, not a different loss
    fh, fw = torch.autograd.grad(fp32_loss, (hidden, weight))
    assert torch.nn.functional.cosine_similarity(gw.flatten(), fw.flatten(), dim=0) > 0.99


def _bf16_loss_errors(monkeypatch, mode: str, chunk_tokens: int) -> tuple[float, float, float]:
    """Relative errors of the bf16-autocast loss and its hidden and weight gradients against the exact
    (fp64) ones of the bf16-rounded inputs, the best a bf16 computation can aim at."""
    bf16_gemm_mode(monkeypatch, mode)
    hidden, weight, target = _inputs(n=300, width=64, vocab=1001, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = fused_linear_cross_entropy(hidden, weight, target, ignore_index=PAD, label_smoothing=0.1,
                                                chunk_tokens=chunk_tokens)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    assert loss.dtype == gh.dtype == gw.dtype == torch.float32
    h64, w64 = (t.detach().bfloat16().double().requires_grad_() for t in (hidden, weight))
    ref, _ = reference_linear_cross_entropy(h64, w64, target, ignore_index=PAD, label_smoothing=0.1)
    rh, rw = torch.autograd.grad(ref, (h64, w64))
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
    return abs(float(loss) - float(ref)) / float(ref), rel(gh, rh), rel(gw, rw)


@pytest.mark.parametrize("chunk_tokens", [64, 0])  # several chunks (the weight's gradient accumulated in the product), one
def test_mkls_bf16_products_give_fp32_logits_and_gradients_closer_to_exact(monkeypatch, chunk_tokens):
    """With MKL's bf16 x bf16 -> fp32 product the logits are not rounded to bf16 and the weight's gradient
    accumulates in fp32 inside the product: the loss is the exact one of the bf16 inputs to fp32 precision,
    and loss and gradients are closer to exact than with PyTorch's bf16 products."""
    mkl = _bf16_loss_errors(monkeypatch, "mkl", chunk_tokens)
    torch_path = _bf16_loss_errors(monkeypatch, "torch", chunk_tokens)
    assert mkl[0] < 1e-5  # fp32 logits: only summation order and the exp/log differ
    assert mkl[1] < 0.01 and mkl[2] < 0.01  # the logits' gradient still enters the products in bf16
    for got, other in zip(mkl, torch_path):
        assert got < other / 2, (mkl, torch_path)


def test_mkls_products_are_what_the_bf16_loss_runs(monkeypatch):
    """Under bf16 autocast with MKL on, the three products per chunk are MKL's (none is PyTorch's mm), and
    the result equals the same computation with MKL off to bf16 tolerance."""
    bf16_gemm_mode(monkeypatch, "mkl")
    calls, mms = [], []
    real_gemm, real_mm = bf16_gemm.gemm, torch.mm
    monkeypatch.setattr(bf16_gemm, "gemm", lambda a, b, out, beta=0.0: calls.append(beta) or real_gemm(a, b, out, beta))
    monkeypatch.setattr(torch, "mm", lambda *a, **k: mms.append(1) or real_mm(*a, **k))
    hidden, weight, target = _inputs(n=40, width=16, vocab=99, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = fused_linear_cross_entropy(hidden, weight, target, ignore_index=PAD, chunk_tokens=10)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    chunks = -(-int(target.ne(PAD).sum()) // 10)
    assert not mms and len(calls) == 3 * chunks
    assert calls[2::3] == [0.0] + [1.0] * (chunks - 1)  # the weight's gradient: written, then accumulated
    bf16_gemm_mode(monkeypatch, "torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, _, _ = fused_linear_cross_entropy(hidden, weight, target, ignore_index=PAD, chunk_tokens=10)
    rh, rw = torch.autograd.grad(ref, (hidden, weight))
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=0)
    for g, r in ((gh, rh), (gw, rw)):
        assert torch.nn.functional.cosine_similarity(g.flatten(), r.flatten(), dim=0) > 0.999


def _row_tails(t: torch.Tensor) -> torch.Tensor | None:
    """The elements between the rows of a 2-d view into padded rows (a transposed one read row by
    row as stored), which a matmul kernel may read past each row's end; None for a dense tensor."""
    if t.dim() != 2:
        return None
    if t.stride(0) == 1 and t.stride(1) != 1:
        t = t.t()
    rows, cols, stride = t.size(0), t.size(1), t.stride(0)
    if t.stride(1) != 1 or stride <= cols or rows < 2:
        return None
    return t.as_strided((rows - 1, stride - cols), (stride, 1), t.storage_offset() + cols)


@pytest.mark.parametrize("autocast", [False, "torch", "mkl"])
def test_the_matmuls_never_read_inf_in_the_padded_rows(monkeypatch, autocast):
    """The chunk buffers' rows are padded (_padded_row) and the log-softmax puts -inf in the padding;
    the gradient matmuls take views of those buffers. oneDNN's bf16 kernels on AMX read a strided
    operand's row tail: with -inf there every gradient came out NaN (width 36, 18,617 entries,
    2026-12-07). Checked here on any CPU: every operand's row tails are finite when a matmul runs."""
    seen = []

    def checked(fn, operands=None):
        def call(*args, **kwargs):
            for a in args[:operands]:  # bf16_gemm.gemm's third argument is its output
                if isinstance(a, torch.Tensor):
                    tails = _row_tails(a)
                    if tails is not None:
                        seen.append(a.shape)
                        assert torch.isfinite(tails).all(), f"a matmul operand {tuple(a.shape)} has -inf/NaN in its row padding"
            return fn(*args, **kwargs)
        return call

    if autocast:
        bf16_gemm_mode(monkeypatch, autocast)
    monkeypatch.setattr(torch, "mm", checked(torch.mm))
    monkeypatch.setattr(torch.Tensor, "addmm_", checked(torch.Tensor.addmm_))
    monkeypatch.setattr(bf16_gemm, "gemm", checked(bf16_gemm.gemm, operands=2))
    hidden, weight, target = _inputs(n=40, width=12, vocab=301, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(autocast)):
        loss, _, _ = fused_linear_cross_entropy(hidden, weight, target, ignore_index=PAD, label_smoothing=0.1,
                                                chunk_tokens=16)
    loss.backward()
    assert seen  # the padded buffers were matmul operands (301 entries: rows of 304 or 320)
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()


def test_a_narrow_model_with_an_odd_vocabulary_gets_finite_bf16_gradients():
    """The case that failed on AMX (configs/pretrain/phase1 with bart_tiny_preln: fairseq's "gradients are
    Nan/Inf" on the first update): 36 wide, the corpus' 18,617 entries, bf16 autocast. The gradients are
    finite and near the unfused loss's."""
    hidden, weight, target = _inputs(n=300, width=36, vocab=18617, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = fused_linear_cross_entropy(hidden, weight, target, ignore_index=PAD)
        ref, _ = reference_linear_cross_entropy(hidden, weight, target, ignore_index=PAD)
    got, want = torch.autograd.grad(loss, (hidden, weight)), torch.autograd.grad(ref, (hidden, weight))
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        assert torch.nn.functional.cosine_similarity(g.flatten(), w.flatten(), dim=0) > 0.999


@pytest.mark.parametrize("staging_elements", [7, 32, 100, 250, 10_000])  # no row, 1 row, several blocks, one
def test_adding_bf16_through_a_staging_buffer_equals_a_mixed_add(staging_elements):
    g = torch.Generator().manual_seed(3)
    acc = torch.randn(25, 32, generator=g)
    low = torch.randn(25, 32, generator=g).bfloat16()
    staging = torch.full((staging_elements,), float("nan"))
    want = acc + low  # PyTorch's mixed-dtype add: low cast to fp32, then added
    add_through(acc, low, staging)
    assert torch.equal(acc, want)


def test_bf16_weight_gradient_through_the_staging_buffer_equals_the_plain_mixed_add(monkeypatch):
    """Chunks of 8 tokens x 300 entries: the fp32 buffer holds 75 rows of 32, so each chunk's weight
    gradient goes through it in 4 blocks, while the buffer still serves the next chunk's log-softmax.
    Bit-equal to adding each chunk's bf16 product with PyTorch's mixed-dtype add_ (PyTorch's products:
    MKL's accumulates in fp32 itself)."""
    bf16_gemm_mode(monkeypatch, "torch")
    from bart_ext.losses import chunked

    hidden, weight, target = _inputs(n=64, width=32, vocab=300, dtype=torch.float32)
    out = []
    for add in (chunked.add_through, lambda acc, low, staging: acc.add_(low)):
        monkeypatch.setattr(chunked, "add_through", add)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, nll, _ = fused_linear_cross_entropy(hidden, weight, target, ignore_index=PAD, label_smoothing=0.1,
                                                      chunk_tokens=8)
        out.append((loss, nll, *torch.autograd.grad(loss, (hidden, weight))))
    for got, want in zip(*out):
        assert torch.equal(got, want)


def test_the_correct_count_equals_argmax_with_ties():
    g = torch.Generator().manual_seed(3)
    lp = torch.randn(40, 11, generator=g)
    target = lp.argmax(-1)  # every row correct...
    target[::3] = torch.randint(0, 11, (14,), generator=g)  # ...but some
    # tied maxima: the first of the tied entries is argmax's choice, a later one is not
    lp[1, 2] = lp[1, 7] = lp[1].max() + 1
    target[1] = 7
    lp[2, 4] = lp[2, 9] = lp[2].max() + 1
    target[2] = 4
    lp[4] = 0.0  # a row of equal entries: only index 0 counts
    target[4] = 0
    lp[5] = 0.0
    target[5] = 3
    want = int(lp.argmax(-1).eq(target).sum())
    assert int(_count_correct(lp, target)) == want
    assert 0 < want < 40
    assert int(_count_correct(lp, torch.full((40,), 10))) == int(lp.argmax(-1).eq(10).sum())


@pytest.mark.parametrize("n", [0, 6])
def test_a_batch_of_padding_only_gives_zero_loss_and_zero_gradients(n):
    hidden, weight, _ = _inputs(n=n)
    target = torch.full((n,), PAD)
    loss, nll, n_correct = fused_linear_cross_entropy(hidden, weight, target, ignore_index=PAD, chunk_tokens=4)
    assert float(loss) == float(nll) == 0.0 and int(n_correct) == 0
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    assert gh.shape == hidden.shape and gw.shape == weight.shape
    assert not gh.any() and not gw.any()


def test_auto_chunk_sizes():
    assert auto_chunk_tokens(50265) == 256 and auto_chunk_tokens(22400) == 512 and auto_chunk_tokens(40) == 4096


def test_chunk_buffer_rows_are_whole_64_byte_lines():
    """The logits' rows are padded (odd vocabularies slowed MKL's projection by a third); the loss
    tests above run odd vocabularies (7, 29, 300) through the padded buffers."""
    assert _padded_row(18617, torch.float32) == 18624 and _padded_row(18624, torch.float32) == 18624
    assert _padded_row(50265, torch.bfloat16) == 50272 and _padded_row(29, torch.float64) == 32


def test_bad_shapes_are_named():
    hidden, weight, target = _inputs()
    with pytest.raises(ValueError, match="37 tokens but target has 36"):
        fused_linear_cross_entropy(hidden, weight, target[:-1], ignore_index=PAD)
    with pytest.raises(ValueError, match="13 wide but the output projection is \\(29, 14\\)"):
        fused_linear_cross_entropy(hidden[:, :13], weight, target, ignore_index=PAD)


def _sample(d, seed=0):
    src, lengths, tgt = batch(d, seed)
    prev = torch.roll(tgt, 1, dims=1)
    return {"net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev},
            "target": tgt, "ntokens": int(tgt.ne(d.pad()).sum())}


def _run(criterion, model, sample):
    model.zero_grad(set_to_none=True)
    loss, size, log = criterion(model, sample)
    loss.backward()
    return loss.detach(), size, log, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _models(d):
    # fp32: fairseq's criteria take an fp32 log-softmax whatever the model's dtype
    ours = BartPreln.build_model(preln_args(), fake_task(d))
    stock = fairseq_bart(d, encoder_layers=1, decoder_layers=1, encoder_embed_dim=12, decoder_embed_dim=12,
                         encoder_ffn_embed_dim=14, decoder_ffn_embed_dim=14, encoder_attention_heads=3,
                         decoder_attention_heads=3, dropout=0.0, max_source_positions=64,
                         max_target_positions=64)
    return {"bart_preln": ours, "fairseq bart": stock}


@pytest.mark.parametrize("which", ["bart_preln", "fairseq bart"])
@pytest.mark.parametrize("smoothed", [False, True])
def test_criteria_equal_fairseqs(which, smoothed):
    d = dictionary(41)
    task = fake_task(d)
    model = _models(d)[which]
    sample = _sample(d)
    if smoothed:
        ours = BartLabelSmoothedCrossEntropy(task, False, 0.1, ignore_prefix_size=1, report_accuracy=True,
                                             loss_chunk_tokens=4)
        ref = LabelSmoothedCrossEntropyCriterion(task, False, 0.1, ignore_prefix_size=1, report_accuracy=True)
    else:
        ours, ref = BartCrossEntropy(task, False, loss_chunk_tokens=4), CrossEntropyCriterion(task, False)
    got, want = _run(ours, model, sample), _run(ref, model, sample)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-6)
    assert got[1] == want[1]
    assert set(got[2]) == set(want[2])
    for key in want[2]:
        torch.testing.assert_close(torch.as_tensor(got[2][key]).double(), torch.as_tensor(want[2][key]).double(),
                                   atol=1e-5, rtol=1e-6, msg=key)
    assert set(got[3]) == set(want[3])
    for name in want[3]:
        torch.testing.assert_close(got[3][name], want[3][name], atol=1e-6, rtol=1e-4, msg=name)


def test_bf16_autocast_model_runs_its_loss_in_bf16_matmuls(monkeypatch):
    bf16_gemm_mode(monkeypatch, "torch")  # MKL's products: test_mkls_products_are_what_the_bf16_loss_runs
    d = dictionary(41)
    model = BartPreln.build_model(preln_args(bf16_autocast=True), fake_task(d))
    assert model.bf16_autocast
    crit = BartLabelSmoothedCrossEntropy(fake_task(d), False, 0.1, loss_chunk_tokens=4)
    seen = []
    real_mm = torch.mm

    def spy(a, b, **kw):
        seen.append(a.dtype)
        return real_mm(a, b, **kw)

    torch.mm = spy
    try:
        loss, _, log = crit(model, _sample(d))
    finally:
        torch.mm = real_mm
    assert seen and set(seen) == {torch.bfloat16} and loss.dtype == torch.float32
    fp32 = LabelSmoothedCrossEntropyCriterion(fake_task(d), False, 0.1)
    model.bf16_autocast = False
    ref_loss, _, _ = fp32(model, _sample(d))
    assert abs(float(loss) - float(ref_loss)) / float(ref_loss) < 0.02


def test_models_without_a_plain_projection_fall_back_to_fairseqs_loss():
    d = dictionary(41)
    model = BartPreln.build_model(preln_args(), fake_task(d)).double()
    assert output_weight(model) is model.decoder.output_projection.weight
    model.decoder.adaptive_softmax = types.SimpleNamespace()  # as fairseq's adaptive-softmax decoders have
    assert output_weight(model) is None
    del model.decoder.adaptive_softmax
    sample = _sample(d)
    crit = BartCrossEntropy(fake_task(d), False)
    loss_none, _, _ = crit(model, sample, reduce=False)  # unreduced: fairseq's path, per token
    assert loss_none.numel() == sample["target"].numel()


def test_backward_from_the_loss_itself_and_through_a_retained_graph():
    hidden, weight, target = _inputs()
    loss, _, _ = fused_linear_cross_entropy(hidden, weight, target, ignore_index=PAD, chunk_tokens=8)
    loss.backward(retain_graph=True)  # grad_loss == 1: the saved gradients are handed over as they are
    first = hidden.grad.clone(), weight.grad.clone()
    loss.backward()  # a second backward must see them unchanged
    torch.testing.assert_close(hidden.grad, 2 * first[0])
    torch.testing.assert_close(weight.grad, 2 * first[1])
    ref, _ = reference_linear_cross_entropy(hidden, weight, target, ignore_index=PAD)
    rh, rw = torch.autograd.grad(ref, (hidden, weight))
    torch.testing.assert_close(first[0], rh, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(first[1], rw, atol=1e-12, rtol=1e-10)
