"""Beam search with encoder states and cross-attention keys kept once per sentence.

fairseq's SequenceGenerator repeats every sentence's encoder output ``beam`` times and
reorders it, with every cross-attention cache, at each step. Under ``set_beam_size`` the
bart_preln model keeps them per sentence instead; generation must not change.
"""
from __future__ import annotations

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

import bart_ext.adapters.fairseq_patches  # noqa: F401  (installs bart_ext's n-gram blocking)
from bart_ext.adapters.fairseq_model import BEAM
from bart_ext.model import BartConfig, Decoder, Encoder
from tests.helpers import dictionary, fake_task, preln_args
from user_dir.bart_preln import BartPreln


def test_decode_with_shared_rows_equals_repeated_rows():
    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=40, embed_dim=12, ffn_dim=14, encoder_layers=1, decoder_layers=2,
                     attention_heads=3, dropout=0.0)
    embed = torch.nn.Embedding(40, 12, padding_idx=1)
    enc_mod, dec = Encoder(cfg, embed).eval(), Decoder(cfg, embed).eval()
    beam = 3
    src = torch.randint(4, 40, (2, 7))
    src[1, :2] = 1  # left padding in one sentence
    tokens = torch.randint(4, 40, (2 * beam, 5))
    with torch.no_grad():
        enc, pad = enc_mod.encode(src)
        shared = dec.decode(tokens, enc, pad, beam=beam)
        repeated = dec.decode(tokens, enc.repeat_interleave(beam, 0), pad.repeat_interleave(beam, 0))
        with pytest.raises(ValueError, match="encoder rows"):
            dec.decode(tokens[:5], enc, pad, beam=beam)
    torch.testing.assert_close(shared, repeated, atol=1e-6, rtol=0)


def _generate(monkeypatch, shared: bool, beam: int = 4):
    monkeypatch.setenv("BART_EXT_BEAM_SHARED", "1" if shared else "0")
    d = dictionary(60)
    torch.manual_seed(3)
    model = BartPreln.build_model(preln_args(), fake_task(d)).eval()
    with torch.no_grad():  # larger weights and a likelier </s>: sentences then finish at different steps
        for p in model.parameters():
            p.normal_(0, 1.0)
        model.decoder.embed_tokens.weight[d.eos()] *= 5
    g = torch.Generator().manual_seed(5)
    src = torch.randint(d.nspecial, len(d), (6, 11), generator=g)
    src[:, -1] = d.eos()
    for i in range(6):
        src[i, : i] = d.pad()  # fairseq pads sources on the left
    sample = {"net_input": {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1)}}
    gen = SequenceGenerator([model], d, beam_size=beam, max_len_b=14, min_len=2, no_repeat_ngram_size=2)

    rows = []  # encoder rows after each reorder: shows the batch shrinking as sentences finish
    reorder = model.encoder.reorder_encoder_out

    def spy(encoder_out, new_order):
        out = reorder(encoder_out, new_order)
        rows.append((out["encoder_out"][0].size(1), BEAM in out and bool(out[BEAM][0][1])))
        return out

    monkeypatch.setattr(model.encoder, "reorder_encoder_out", spy)
    with torch.no_grad():
        hyps = gen.generate([model], sample)
    return hyps, rows


def test_generation_unchanged_by_shared_encoder_states(monkeypatch):
    beam = 4
    shared, rows_shared = _generate(monkeypatch, True, beam)
    plain, rows_plain = _generate(monkeypatch, False, beam)
    # The shared run keeps one row per live sentence, the plain one a row per hypothesis.
    assert all(flag for _, flag in rows_shared) and not any(flag for _, flag in rows_plain)
    assert [r * beam for r, _ in rows_shared] == [r for r, _ in rows_plain]
    assert rows_shared[0][0] == 6 and rows_shared[-1][0] < 6, "some sentences must finish early"
    for a, b in zip(shared, plain):
        assert [h["tokens"].tolist() for h in a] == [h["tokens"].tolist() for h in b]
        torch.testing.assert_close(torch.stack([h["score"] for h in a]), torch.stack([h["score"] for h in b]),
                                   atol=1e-5, rtol=0)


def test_a_model_left_in_beam_mode_scores_and_trains_per_row(monkeypatch):
    """``set_beam_size`` marks encoder outputs for the generator's reorders only: a full forward
    (scoring, validation, training) of a model left in beam mode reads one encoder row per row."""
    monkeypatch.setenv("BART_EXT_BEAM_SHARED", "1")
    d = dictionary(60)
    torch.manual_seed(3)
    model = BartPreln.build_model(preln_args(), fake_task(d)).eval()
    src = torch.randint(d.nspecial, len(d), (3, 9))
    prev = torch.randint(d.nspecial, len(d), (3, 6))
    with torch.no_grad():
        plain = model(src, None, prev)[0]
        model.set_beam_size(4)
        assert model.encoder(src)[BEAM][0].tolist() == [4, 0]
        in_beam_mode = model(src, None, prev)[0]
    torch.testing.assert_close(in_beam_mode, plain, atol=0, rtol=0)
    model.train()
    assert BEAM not in model.encoder(src)
    model(src, None, prev)[0].sum().backward()


def test_beam_of_a_search_is_its_own_not_the_last_set_beam_size(monkeypatch):
    """fairseq's SequenceGenerator calls ``set_beam_size`` only for beams above 1, and every generator
    calls it when built: a greedy search after a beam of 4 (bart_ext.load(...).sample after summarize), or
    a beam of 4 run by a generator built before one of 3, read the last size set. The greedy search
    failed ("cannot be reordered by 2 rows with beam size 5"); the beam of 4 under a size of 3 could
    group the wrong rows. Each search's beam now comes from its own first reorder."""
    d = dictionary(60)
    torch.manual_seed(3)
    src = torch.randint(d.nspecial, len(d), (3, 9))
    src[:, -1] = d.eos()
    src[1, :2] = d.pad()
    sample = {"net_input": {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1)}}

    def outputs(shared: bool):
        monkeypatch.setenv("BART_EXT_BEAM_SHARED", "1" if shared else "0")
        torch.manual_seed(3)
        model = BartPreln.build_model(preln_args(), fake_task(d)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 1.0)
        four = SequenceGenerator([model], d, beam_size=4, max_len_b=10)
        SequenceGenerator([model], d, beam_size=3, max_len_b=10)  # leaves set_beam_size(3)
        greedy = SequenceGenerator([model], d, beam_size=1, max_len_b=10)
        with torch.no_grad():
            runs = [four.generate([model], sample), greedy.generate([model], sample)]
        if shared:
            assert model.encoder.beam_size == 3
        return [[[h["tokens"].tolist() for h in hyps] for hyps in run] for run in runs]

    assert outputs(shared=True) == outputs(shared=False)
