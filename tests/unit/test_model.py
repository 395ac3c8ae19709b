"""Pre-LN BART: equivalence with fairseq's bart, LayerNorm placement, incremental decoding, sizes."""
from __future__ import annotations

import argparse
import logging

import pytest
import torch
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture, bart_large_architecture

from bart_ext.model import BartConfig, BartModel, DecoderLayer, EncoderLayer, count_parameters
from tests.helpers import dictionary, fake_task, preln_args
from user_dir.bart_preln import BartPreln, bart_base_preln, bart_large_preln


def fairseq_bart(d, arch=bart_base_architecture, **dims):
    args = argparse.Namespace(**dims)
    arch(args)
    return BARTModel.build_model(args, fake_task(d))


def batch(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(d.nspecial, len(d), (3, 9), generator=g)
    src[0, :3] = d.pad()  # fairseq pads sources on the left
    tgt = torch.randint(d.nspecial, len(d), (3, 7), generator=g)
    tgt[1, -2:] = d.pad()  # and targets on the right
    return src, src.ne(d.pad()).sum(1), tgt


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-9)])
def test_post_ln_switch_reproduces_fairseq_bart(dtype, atol):
    d = dictionary()
    ref = fairseq_bart(d, encoder_layers=2, decoder_layers=2, encoder_embed_dim=12, decoder_embed_dim=12,
                       encoder_ffn_embed_dim=14, decoder_ffn_embed_dim=14, encoder_attention_heads=3,
                       decoder_attention_heads=3, dropout=0.0, max_source_positions=64, max_target_positions=64)
    ours = BartPreln.build_model(preln_args(post_ln=True), fake_task(d))
    sd = ref.state_dict()
    assert set(sd) - set(ours.state_dict()) == {"encoder.version", "decoder.version"}
    assert set(ours.state_dict()) <= set(sd)
    ours.load_state_dict(dict(sd))
    ref, ours = ref.eval().to(dtype), ours.eval().to(dtype)
    src, lengths, tgt = batch(d)
    expected = ref(src, lengths, tgt)[0]
    got = ours(src, lengths, tgt)[0]
    assert expected.shape == got.shape == (3, 7, len(d))
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def _shift_commutes(layer, x, **kwargs) -> bool:
    """Pre-LN layers satisfy f(x + c) - (x + c) == f(x) - x for a per-token constant c."""
    c = torch.randn(x.shape[0], x.shape[1], 1, dtype=x.dtype) * 3
    delta = layer(x, **kwargs) - x
    shifted = layer(x + c, **kwargs) - (x + c)
    return torch.allclose(delta, shifted, atol=1e-9)


@pytest.mark.parametrize("layer_cls", [EncoderLayer, DecoderLayer])
def test_pre_ln_keeps_the_residual_stream_unnormalised(layer_cls):
    """Fails if a LayerNorm sits after a residual add, or a sublayer input is not normalised."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    enc = torch.randn(2, 4, 12, dtype=torch.float64)
    if layer_cls is EncoderLayer:
        kwargs = dict(mask=None)
    else:
        kwargs = dict(enc=enc, enc_mask=None, self_mask=None, causal=True, cache=None)
    results = {}
    for pre in (True, False):
        cfg = BartConfig(vocab_size=20, embed_dim=12, ffn_dim=14, attention_heads=3, dropout=0.0,
                         normalize_before=pre)
        layer = layer_cls(cfg).double().eval()
        for p in layer.parameters():  # non-trivial LayerNorm gains and biases too
            torch.nn.init.normal_(p, std=0.5)
        results[pre] = _shift_commutes(layer, x, **kwargs)
    assert results[True], "a Pre-LN layer must add its sublayers to an un-normalised residual stream"
    assert not results[False], "the check must detect Post-LN placement"


def test_pre_ln_has_final_layer_norms_on_encoder_and_decoder_outputs():
    cfg = BartConfig(vocab_size=30, embed_dim=12, ffn_dim=14, attention_heads=3, encoder_layers=2,
                     decoder_layers=2, dropout=0.0)
    model = BartModel(cfg).eval()
    assert isinstance(model.encoder.layer_norm, torch.nn.LayerNorm)
    assert isinstance(model.decoder.layer_norm, torch.nn.LayerNorm)
    seen = {}
    model.encoder.layers[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("enc_last", o))
    model.decoder.layers[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("dec_last", o))
    src = torch.randint(4, 30, (2, 6))
    enc, pad = model.encoder.encode(src)
    dec = model.decoder.decode(src, enc, pad)
    torch.testing.assert_close(enc, model.encoder.layer_norm(seen["enc_last"]))
    torch.testing.assert_close(dec, model.decoder.layer_norm(seen["dec_last"]))
    post = BartModel(BartConfig(vocab_size=30, embed_dim=12, ffn_dim=14, attention_heads=3, normalize_before=False))
    assert post.encoder.layer_norm is None and post.decoder.layer_norm is None


@pytest.mark.parametrize("post_ln", [False, True])
def test_incremental_decoding_equals_full_decoding(post_ln):
    d = dictionary()
    torch.manual_seed(1)
    model = BartPreln.build_model(preln_args(post_ln=post_ln), fake_task(d)).eval()
    src, lengths, tgt = batch(d, seed=3)
    tgt[1, -2:] = 10  # incremental decoding never sees padding inside the prefix
    with torch.no_grad():
        enc_out = model.encoder(src, lengths)
        full = model.decoder(tgt, enc_out)[0]
        state: dict = {}
        steps = [model.decoder(tgt[:, : t + 1], enc_out, incremental_state=state)[0] for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)

    # Beam search reorders the batch between steps: the cache must follow.
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        state = {}
        for t in range(3):
            model.decoder(tgt[:, : t + 1], enc_out, incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, order)
        enc_re = model.encoder.reorder_encoder_out(enc_out, order)
        step = model.decoder(tgt[order, :4], enc_re, incremental_state=state)[0]
        ref = model.decoder(tgt[order, :4], enc_re)[0][:, -1:]
    torch.testing.assert_close(step, ref, atol=1e-5, rtol=0)


def _meta_counts(arch_fairseq, arch_ours, monkeypatch):
    # Shapes only, on the meta device; fairseq's initialiser copies data, so it is skipped.
    monkeypatch.setattr("fairseq.models.bart.model.init_bert_params", lambda module: None)
    d = dictionary(50265 - 4)
    assert len(d) == 50265
    with torch.device("meta"):
        ref = fairseq_bart(d, arch_fairseq)
        cfg = argparse.Namespace(post_ln=False, init_missing_final_layer_norm=False)
        arch_ours(cfg)
        ours = BartPreln.build_model(cfg, fake_task(d))
    return count_parameters(ref), count_parameters(ours), cfg.encoder_embed_dim


@pytest.mark.parametrize(
    "arch_fairseq,arch_ours,expected_millions",
    [(bart_large_architecture, bart_large_preln, 406), (bart_base_architecture, bart_base_preln, 140)],
)
def test_parameter_counts_match_bart(arch_fairseq, arch_ours, expected_millions, monkeypatch):
    ref, ours, dim = _meta_counts(arch_fairseq, arch_ours, monkeypatch)
    # Same shapes as fairseq's bart plus the two final LayerNorms of Pre-LN.
    assert ours == ref + 2 * 2 * dim
    assert abs(ours / 1e6 - expected_millions) < 0.01 * expected_millions, ours


def test_post_ln_checkpoint_into_pre_ln_is_refused_or_explicit(caplog):
    d = dictionary()
    post = BartPreln.build_model(preln_args(post_ln=True), fake_task(d))
    pre = BartPreln.build_model(preln_args(), fake_task(d))
    with pytest.raises(ValueError, match="Post-LN layout.*--init-missing-final-layer-norm"):
        pre.load_state_dict(dict(post.state_dict()))

    pre = BartPreln.build_model(preln_args(init_missing_final_layer_norm=True), fake_task(d))
    with caplog.at_level(logging.WARNING):
        pre.load_state_dict(dict(post.state_dict()))
    assert "encoder.layer_norm.weight" in caplog.text and "decoder.layer_norm.bias" in caplog.text
    torch.testing.assert_close(pre.encoder.layer_norm.weight, torch.ones(12))
    torch.testing.assert_close(pre.encoder.layers[0].fc1.weight, post.encoder.layers[0].fc1.weight)

    with pytest.raises(ValueError, match="Pre-LN layout"):
        post.load_state_dict(dict(BartPreln.build_model(preln_args(), fake_task(d)).state_dict()))


def test_mismatched_dictionaries_are_refused():
    src, tgt = dictionary(50), dictionary(51)
    task = fake_task(src)
    task.target_dictionary = tgt
    with pytest.raises(ValueError, match="joined-dictionary"):
        BartPreln.build_model(preln_args(), task)


def _loss_and_grads(model, src, lengths, tgt, seed):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    logits = model(src, lengths, tgt)[0]
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1), ignore_index=1)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_checkpoint_activations_gives_the_same_gradients_and_keeps_fewer_tensors():
    d = dictionary()
    # dropout on: the recomputation must replay the same masks
    plain = BartPreln.build_model(preln_args(dropout=0.1, attention_dropout=0.1), fake_task(d)).train()
    ckpt = BartPreln.build_model(preln_args(dropout=0.1, attention_dropout=0.1, checkpoint_activations=True),
                                 fake_task(d)).train()
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.encoder.checkpoint_activations and ckpt.decoder.checkpoint_activations
    src, lengths, tgt = batch(d)
    (l0, g0), (l1, g1) = _loss_and_grads(plain, src, lengths, tgt, 3), _loss_and_grads(ckpt, src, lengths, tgt, 3)
    torch.testing.assert_close(l1, l0, atol=0, rtol=0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-7, rtol=1e-6, msg=name)

    def saved_bytes(model):
        total = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            model(src, lengths, tgt)[0].sum()
        return sum(total)

    assert saved_bytes(ckpt) < 0.6 * saved_bytes(plain)
    ckpt.eval()  # generation: incremental decoding is unaffected
    with torch.no_grad():
        torch.testing.assert_close(ckpt(src, lengths, tgt)[0], plain.eval()(src, lengths, tgt)[0])


@pytest.mark.parametrize("autocast", [False, True])
def test_feed_forward_recomputes_gelu_with_the_same_outputs_and_gradients(autocast):
    """The sublayer keeps fc1's output for the backward but not gelu's (recomputed there): the same
    outputs and gradients as the plain composition, bit for bit, and half the saved activations."""
    torch.manual_seed(0)
    layer = EncoderLayer(BartConfig(vocab_size=40, embed_dim=16, ffn_dim=64, attention_heads=4, dropout=0.0))
    x = torch.randn(3, 10, 16, requires_grad=True)

    def run(plain: bool):
        saved = []
        layer.zero_grad()
        x.grad = None
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                out = layer.fc2(torch.nn.functional.gelu(layer.fc1(x))) if plain else layer.ffn(x)
        out.float().square().sum().backward()
        return out.detach(), [x.grad.clone()] + [p.grad.clone() for p in (layer.fc1.weight, layer.fc1.bias,
                                                                        layer.fc2.weight, layer.fc2.bias)], sum(saved)

    out_ref, grads_ref, saved_ref = run(plain=True)
    out, grads, saved = run(plain=False)
    assert torch.equal(out, out_ref)
    for g, r in zip(grads, grads_ref):
        assert torch.equal(g, r)
    activation = 3 * 10 * 64 * (2 if autocast else 4)  # one (tokens x ffn) tensor
    assert saved == saved_ref - activation  # gelu's output is gone; everything else is kept as before
