"""Packed (variable-length) attention on padded batches: the path that keeps FlashAttention on GPUs.

On the CPU it runs through SDPA's jagged nested tensors (math kernel); ``BART_EXT_ATTENTION=packed``
forces it so that its outputs and gradients can be checked against the masked path here.
"""
from __future__ import annotations

import pytest
import torch

from bart_ext import model as bart_model
from bart_ext.model import BartConfig, BartModel, Packing, compile_layers, use_packed_attention

PAD = 1


def tiny(normalize_before: bool = True) -> BartModel:
    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=40, embed_dim=16, ffn_dim=24, encoder_layers=2, decoder_layers=2,
                     attention_heads=4, max_positions=32, dropout=0.0, normalize_before=normalize_before)
    return BartModel(cfg)


def padded_batch(left_pad_target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, 40, (4, 11), generator=g)
    src[0, :4] = PAD  # fairseq pads sources on the left
    src[2, :1] = PAD
    tgt = torch.randint(4, 40, (4, 8), generator=g)
    if left_pad_target:
        tgt[1, :3] = PAD
    else:
        tgt[1, -3:] = PAD  # and targets on the right
        tgt[3, -1:] = PAD
    return src, tgt


def loss_and_grads(m: BartModel, src, tgt, attention: str, monkeypatch) -> tuple[torch.Tensor, dict, torch.Tensor]:
    monkeypatch.setenv("BART_EXT_ATTENTION", attention)
    m.zero_grad()
    logits = m(src, tgt)
    real = tgt.ne(PAD)
    loss = torch.nn.functional.cross_entropy(logits[real], (tgt * 7 % 40)[real])  # pad targets ignored
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}, logits.detach()


@pytest.mark.parametrize("normalize_before", [True, False])
@pytest.mark.parametrize("left_pad_target", [False, True])
def test_packed_equals_masked_on_real_positions(normalize_before, left_pad_target, monkeypatch):
    m = tiny(normalize_before)
    src, tgt = padded_batch(left_pad_target)
    loss_m, grads_m, logits_m = loss_and_grads(m, src, tgt, "mask", monkeypatch)
    loss_p, grads_p, logits_p = loss_and_grads(m, src, tgt, "packed", monkeypatch)
    real = tgt.ne(PAD)
    torch.testing.assert_close(logits_p[real], logits_m[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(loss_p, loss_m, atol=1e-6, rtol=0)
    for name, g in grads_m.items():
        torch.testing.assert_close(grads_p[name], g, atol=1e-5, rtol=1e-4, msg=lambda s, n=name: f"{n}: {s}")


def test_packed_encoder_zeroes_padding_and_matches_real_positions(monkeypatch):
    m = tiny().eval()
    src, _ = padded_batch()
    monkeypatch.setenv("BART_EXT_ATTENTION", "mask")
    enc_m, pad = m.encoder.encode(src)
    monkeypatch.setenv("BART_EXT_ATTENTION", "packed")
    enc_p, _ = m.encoder.encode(src)
    torch.testing.assert_close(enc_p[~pad], enc_m[~pad], atol=1e-5, rtol=0)


def test_right_padded_decoder_drops_its_mask_only_on_the_packed_path(monkeypatch):
    """Right padding + causal: no mask at all (FlashAttention); left padding keeps the mask."""
    seen = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
        seen.append((q.is_nested, attn_mask is not None, is_causal))
        return real_sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)

    monkeypatch.setattr(bart_model.F, "scaled_dot_product_attention", spy)
    m = tiny()
    for left, expected_self in ((False, (False, False, True)), (True, (False, True, False))):
        monkeypatch.setenv("BART_EXT_ATTENTION", "packed")
        seen.clear()
        m(*padded_batch(left))
        # 2 encoder layers (packed), then per decoder layer: self-attention, cross-attention (packed)
        assert seen[:2] == [(True, False, False)] * 2
        assert seen[2::2] == [expected_self] * 2
        assert seen[3::2] == [(True, False, False)] * 2
    monkeypatch.setenv("BART_EXT_ATTENTION", "mask")
    seen.clear()
    m(*padded_batch())
    assert not any(nested for nested, _, _ in seen)


def test_unpadded_batches_need_no_packing(monkeypatch):
    monkeypatch.setenv("BART_EXT_ATTENTION", "packed")
    calls = []
    monkeypatch.setattr(Packing, "of", classmethod(lambda cls, pad: calls.append(pad) or None))
    m = tiny()
    src = torch.randint(4, 40, (2, 6))
    m(src, torch.randint(4, 40, (2, 5)))
    assert calls == []


def test_choice_is_automatic_by_device(monkeypatch):
    monkeypatch.delenv("BART_EXT_ATTENTION", raising=False)
    assert use_packed_attention(torch.device("cuda"))
    assert not use_packed_attention(torch.device("cpu"))
    monkeypatch.setenv("BART_EXT_ATTENTION", "mask")
    assert not use_packed_attention(torch.device("cuda"))
    monkeypatch.setenv("BART_EXT_ATTENTION", "packed")
    assert use_packed_attention(torch.device("cpu"))
    monkeypatch.setenv("BART_EXT_ATTENTION", "flash")
    with pytest.raises(ValueError, match="BART_EXT_ATTENTION='flash'.*auto, mask, packed"):
        use_packed_attention(torch.device("cpu"))


def test_packed_under_bf16_autocast_stays_close(monkeypatch):
    m = tiny().eval()
    src, tgt = padded_batch()
    real = tgt.ne(PAD)
    with torch.autocast("cpu", torch.bfloat16):
        monkeypatch.setenv("BART_EXT_ATTENTION", "mask")
        masked = m(src, tgt).float()
        monkeypatch.setenv("BART_EXT_ATTENTION", "packed")
        packed = m(src, tgt).float()
    torch.testing.assert_close(packed[real], masked[real], atol=3e-2, rtol=0)


def test_packed_with_compiled_layers_and_checkpointing(monkeypatch):
    """--compile and --checkpoint-activations wrap the same layers; the packed mask passes through."""
    m = tiny()
    src, tgt = padded_batch()
    _, grads_ref, logits_ref = loss_and_grads(m, src, tgt, "mask", monkeypatch)
    m.encoder.checkpoint_activations = m.decoder.checkpoint_activations = True
    _, grads_ckpt, logits_ckpt = loss_and_grads(m, src, tgt, "packed", monkeypatch)
    real = tgt.ne(PAD)
    torch.testing.assert_close(logits_ckpt[real], logits_ref[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads_ckpt["encoder.layers.0.fc1.weight"], grads_ref["encoder.layers.0.fc1.weight"],
                               atol=1e-5, rtol=1e-4)
    m.encoder.checkpoint_activations = m.decoder.checkpoint_activations = False
    compile_layers(m)  # forward only: the backward's compile doubles the time and tests/unit/test_compile covers it
    monkeypatch.setenv("BART_EXT_ATTENTION", "packed")
    with torch.no_grad():
        logits_c = m(src, tgt)
    torch.testing.assert_close(logits_c[real], logits_ref[real], atol=1e-4, rtol=0)


@pytest.mark.cuda
def test_padded_batches_train_on_flash_attention_on_cuda(monkeypatch):
    """With only FlashAttention allowed, the automatic (packed) path runs a padded bf16 training step,
    the masked path cannot, and the two agree to bf16 precision."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=40, embed_dim=64, ffn_dim=96, encoder_layers=2, decoder_layers=2,
                     attention_heads=4, max_positions=32, dropout=0.0)  # head_dim 16: Flash's sizes
    m = BartModel(cfg).cuda()
    src, tgt = (t.cuda() for t in padded_batch())
    real = tgt.ne(PAD)
    monkeypatch.delenv("BART_EXT_ATTENTION", raising=False)
    with torch.autocast("cuda", torch.bfloat16):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            flash = m(src, tgt)
            flash[real].float().logsumexp(-1).sum().backward()
        assert m.encoder.layers[0].self_attn.q_proj.weight.grad is not None
        monkeypatch.setenv("BART_EXT_ATTENTION", "mask")
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), pytest.raises(RuntimeError):
            m(src, tgt)
        with sdpa_kernel([SDPBackend.MATH]):
            masked = m(src, tgt)
    torch.testing.assert_close(flash[real].float(), masked[real].float(), atol=5e-2, rtol=0)
