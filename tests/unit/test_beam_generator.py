"""bart_ext's beam search (``BeamSequenceGenerator``) against fairseq's ``SequenceGenerator``.

Both run on the same model and inputs; tokens, scores and positional scores must be equal
with ``torch.equal``, not merely close: the log-probabilities are the same calls, and the
scores the same sums.
"""
from __future__ import annotations

import argparse

import pytest
import torch
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator

import bart_ext.adapters.fairseq_patches  # noqa: F401  (installs bart_ext's n-gram blocking)
from bart_ext.adapters.beam_generator import BeamSequenceGenerator
from tests.helpers import dictionary, fake_task, preln_args
from user_dir.bart_preln import BartPreln


def _model(d, seed: int = 3, eos_boost: float = 5.0):
    torch.manual_seed(seed)
    model = BartPreln.build_model(preln_args(), fake_task(d)).eval()
    with torch.no_grad():  # larger weights and a likelier </s>: sentences finish at different steps
        for p in model.parameters():
            p.normal_(0, 1.0)
        model.decoder.embed_tokens.weight[d.eos()] *= eos_boost
    return model


def _sample(d, n: int = 6, length: int = 11, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(d.nspecial, len(d), (n, length), generator=g)
    src[:, -1] = d.eos()
    for i in range(n):
        src[i, : i % length] = d.pad()  # fairseq pads sources on the left
    return {"id": torch.arange(n), "net_input": {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1)}}


def _both(model, d, sample, prefix_tokens=None, **settings):
    out = []
    for cls in (SequenceGenerator, BeamSequenceGenerator):
        gen = cls([model], d, **settings)
        with torch.no_grad():
            out.append(gen.generate([model], sample, prefix_tokens=prefix_tokens))
    return out


def _assert_equal(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert torch.equal(x["tokens"], y["tokens"]), (x["tokens"], y["tokens"])
            assert torch.equal(x["score"], y["score"])
            assert torch.equal(x["positional_scores"], y["positional_scores"])


SETTINGS = {
    "xsum-like": dict(beam_size=6, max_len_b=14, min_len=3, no_repeat_ngram_size=3),
    "cnn-like": dict(beam_size=4, max_len_b=18, min_len=6, len_penalty=2.0, no_repeat_ngram_size=3),
    "greedy, unk penalty": dict(beam_size=1, max_len_b=10, unk_penalty=0.5),
    "temperature, no length normalisation": dict(beam_size=3, max_len_b=12, temperature=0.7,
                                                 normalize_scores=False),
    "max_len reached": dict(beam_size=5, max_len_b=4, min_len=4),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_equals_fairseq(name):
    d = dictionary(60)
    model = _model(d, eos_boost=1.0 if name == "max_len reached" else 5.0)
    theirs, ours = _both(model, d, _sample(d), **SETTINGS[name])
    _assert_equal(ours, theirs)
    lengths = {len(h["tokens"]) for hyps in ours for h in hyps}
    assert len(lengths) > 1 or name == "max_len reached", "sentences must finish at different steps"


def test_equals_fairseq_with_bos_prefix_and_per_hypothesis_states(monkeypatch):
    """The <s> prefix bart_summarization forces, and the model's states repeated per hypothesis."""
    monkeypatch.setenv("BART_EXT_BEAM_SHARED", "0")
    d = dictionary(60)
    model = _model(d, seed=4)
    sample = _sample(d, n=5, seed=6)
    prefix = torch.full((5, 1), d.bos())
    theirs, ours = _both(model, d, sample, prefix_tokens=prefix, beam_size=4, max_len_b=12, min_len=2,
                         no_repeat_ngram_size=2)
    _assert_equal(ours, theirs)
    assert all(h["tokens"][0] == d.bos() for hyps in ours for h in hyps)


@pytest.mark.parametrize("ragged", [False, True])
def test_equals_fairseq_with_two_token_prefixes(ragged):
    """Prefixes of two tokens; ragged: some sentences' second token is pad (fairseq's own path runs)."""
    d = dictionary(60)
    model = _model(d, seed=8)
    prefix = torch.tensor([[d.bos(), d.nspecial + i] for i in range(6)])
    if ragged:
        prefix[::2, 1] = d.pad()
    theirs, ours = _both(model, d, _sample(d, seed=9), prefix_tokens=prefix, beam_size=3, max_len_b=12,
                         min_len=3, no_repeat_ngram_size=3)
    _assert_equal(ours, theirs)
    for i, hyps in enumerate(ours):
        if not (ragged and i % 2 == 0):
            assert all(h["tokens"][:2].tolist() == prefix[i].tolist() for h in hyps)


def test_nan_log_probabilities_are_replaced_as_fairseq_replaces_them():
    d = dictionary(60)
    model = _model(d, seed=7)
    nan_token = d.nspecial + 3

    def poison(module, inputs, output):  # one NaN logit in every odd row (never the row step 0 reads)
        output[1::2, ..., nan_token] = float("nan")
        return output

    model.decoder.output_projection.register_forward_hook(poison)
    theirs, ours = _both(model, d, _sample(d), beam_size=4, max_len_b=10, no_repeat_ngram_size=2)
    _assert_equal(ours, theirs)
    assert all(torch.isfinite(h["score"]) for hyps in ours for h in hyps)


def _fairseq_transformer(d):
    """fairseq's own transformer, large random weights, and a likelier </s>: sentences finish at different steps."""
    from fairseq.models.transformer import TransformerModel, base_architecture

    args = argparse.Namespace(encoder_embed_dim=16, encoder_ffn_embed_dim=32, encoder_layers=1,
                              encoder_attention_heads=2, decoder_embed_dim=16, decoder_ffn_embed_dim=32,
                              decoder_layers=2, decoder_attention_heads=2, dropout=0.0, max_source_positions=64,
                              max_target_positions=64)
    base_architecture(args)

    def eos_boost(module, inputs, logits):
        logits[..., d.eos()] += 16.0
        return logits

    torch.manual_seed(0)
    model = TransformerModel.build_model(args, fake_task(d)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.0)
    model.decoder.output_projection.register_forward_hook(eos_boost)
    return model


def test_equals_fairseq_on_fairseqs_transformer_with_its_attention():
    """Any fairseq encoder-decoder, not only bart_preln; fairseq's transformer also returns the
    cross-attention, which both generators carry along with the hypotheses."""
    d = dictionary(60)
    model = _fairseq_transformer(d)
    theirs, ours = _both(model, d, _sample(d), beam_size=4, max_len_b=12, min_len=2, no_repeat_ngram_size=2)
    _assert_equal(ours, theirs)
    assert len({len(h["tokens"]) for hyps in ours for h in hyps}) > 1
    for a, b in zip(ours, theirs):
        for x, y in zip(a, b):
            assert x["attention"].numel() > 0 and torch.equal(x["attention"], y["attention"])


def test_other_searches_keep_fairseqs_search():
    from bart_ext.adapters.beam_generator import FewerPassesBeamSearch

    d = dictionary(60)
    model = _model(d)
    sample = _sample(d, n=3)
    settings = dict(beam_size=3, max_len_b=8)
    runs = []
    for cls in (SequenceGenerator, BeamSequenceGenerator):
        gen = cls([model], d, search_strategy=search.Sampling(d, sampling_topk=5), **settings)
        assert type(gen.search) is search.Sampling
        torch.manual_seed(11)
        with torch.no_grad():
            runs.append(gen.generate([model], sample))
    _assert_equal(runs[1], runs[0])
    assert type(BeamSequenceGenerator([model], d, **settings).search) is FewerPassesBeamSearch
    assert BeamSequenceGenerator([model], d, **settings).fallback_reason(sample, None) is None
    assert BeamSequenceGenerator([model], d, search_strategy=search.Sampling(d), **settings) \
        .fallback_reason(sample, None) == "search Sampling"
    assert BeamSequenceGenerator([model], d, match_source_len=True, **settings) \
        .fallback_reason(sample, None) == "match_source_len"
    assert type(BeamSequenceGenerator([model], d, search_strategy=search.DiverseBeamSearch(d, 3, 0.5),
                                      **settings).search) is search.DiverseBeamSearch


def test_match_source_len_equals_fairseq():
    d = dictionary(60)
    model = _model(d)
    theirs, ours = _both(model, d, _sample(d), beam_size=3, max_len_b=50, match_source_len=True)
    _assert_equal(ours, theirs)


def test_min_len_above_max_len_is_a_clear_error():
    d = dictionary(60)
    model = _model(d)
    gen = BeamSequenceGenerator([model], d, beam_size=2, max_len_b=3, min_len=5)
    with pytest.raises(ValueError, match="min_len 5 is larger than max_len 3"):
        gen.generate([model], _sample(d, n=2))


def test_bart_tasks_build_it_unless_told_otherwise(data_dir, monkeypatch):
    from fairseq.dataclass.configs import GenerationConfig

    from user_dir.bart_denoising import BartDenoisingTask

    task = BartDenoisingTask.from_data(data_dir / "bin", tokens_per_sample=32)
    model = _model(task.target_dictionary)
    assert type(task.build_generator([model], GenerationConfig(beam=3))) is BeamSequenceGenerator
    # fairseq's alignment generator reads attention weights, which bart_preln does not materialise: it failed
    # with "IndexError: Dimension out of range" inside fairseq; fairseq's transformer has them
    with pytest.raises(ValueError, match="--print-alignment needs attention weights, which the bart_preln models"):
        task.build_generator([model], GenerationConfig(beam=3, print_alignment="hard"))
    assert type(task.build_generator([_fairseq_transformer(task.target_dictionary)],
                                     GenerationConfig(beam=3, print_alignment="hard"))).__name__ \
        == "SequenceGeneratorWithAlignment"
    monkeypatch.setenv("BART_EXT_GENERATOR", "fairseq")
    assert type(task.build_generator([model], GenerationConfig(beam=3))) is SequenceGenerator
    monkeypatch.setenv("BART_EXT_GENERATOR", "fast")
    with pytest.raises(ValueError, match="BART_EXT_GENERATOR='fast'"):
        task.build_generator([model], GenerationConfig(beam=3))


def test_suppressed_tokens_equal_fairseq_and_never_appear():
    d = dictionary(60)
    model, sample = _model(d), _sample(d)
    _, free = _both(model, d, sample, beam_size=4, max_len_b=12)
    common = torch.cat([h["tokens"] for hyps in free for h in hyps[:1]]).tolist()
    banned = [d[i] for i in sorted(set(common) - {d.eos()}, key=common.count, reverse=True)[:3]]
    theirs, ours = _both(model, d, sample, beam_size=4, max_len_b=12, tokens_to_suppress=banned)
    _assert_equal(ours, theirs)
    produced = {t for hyps in ours for h in hyps for t in h["tokens"].tolist()}
    assert produced.isdisjoint(d.index(s) for s in banned)
    assert [h[0]["tokens"].tolist() for h in ours] != [h[0]["tokens"].tolist() for h in free]


def _nan_rows_under_xsum_settings(device: str):
    """NaN logits in every odd row of the beam steps (batch x beam > 6): their log-softmax is NaN
    throughout, fairseq turns it into -inf and those beams die, the even rows go on. (Poisoning every
    row, as this test first did on the H200, leaves no live beam: fairseq itself then fails its
    `step < max_len` assertion, so there is nothing to compare with.)"""
    d = dictionary(60)
    model = _model(d, seed=7).to(device)
    nan_token = d.nspecial + 3

    def poison(module, inputs, output):
        if output.size(0) > 6:
            output[1::2, ..., nan_token] = float("nan")
        return output

    model.decoder.output_projection.register_forward_hook(poison)
    sample = {"net_input": {k: v.to(device) for k, v in _sample(d)["net_input"].items()}}
    theirs, ours = _both(model, d, sample, **SETTINGS["xsum-like"])
    _assert_equal(ours, theirs)
    assert all(torch.isfinite(h["score"]) for hyps in ours for h in hyps)


def test_equals_fairseq_with_nan_rows_under_xsum_settings():
    _nan_rows_under_xsum_settings("cpu")


@pytest.mark.cuda
def test_equals_fairseq_on_cuda_with_nan_rows():
    """On a GPU the NaN replacement runs every step (no device sync): still fairseq's output."""
    _nan_rows_under_xsum_settings("cuda")


def test_renormalized_is_the_log_softmax_without_the_ruled_out_tokens():
    from bart_ext.adapters.beam_generator import renormalized

    logits = torch.randn(3, 9, dtype=torch.float64)
    lprobs = logits.log_softmax(-1)
    lprobs[0, [2, 5]] = float("-inf")  # two tokens ruled out
    lprobs[2] = float("-inf")  # a row with nothing left stays as it is
    out = renormalized(lprobs.clone())
    kept = torch.ones(9, dtype=torch.bool)
    kept[[2, 5]] = False
    assert torch.allclose(out[0, kept], logits[0, kept].log_softmax(-1))
    assert torch.isinf(out[0, [2, 5]]).all()
    assert torch.allclose(out[1], lprobs[1])  # nothing ruled out: unchanged
    assert torch.isinf(out[2]).all() and not torch.isnan(out).any()


def _blocked(prefix: list[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram of ``prefix`` (a plain reference for the tests)."""
    if len(prefix) < n:
        return set()
    last = prefix[len(prefix) - (n - 1):]
    return {prefix[i + n - 1] for i in range(len(prefix) - n + 1) if prefix[i:i + n - 1] == last}


def test_renormalized_constraint_scores_are_ctranslate2s(monkeypatch):
    """With BART_EXT_CONSTRAINT_SCORES=renormalized each positional score is the token's
    log-probability renormalised over the tokens that blocking, the minimum length and padding
    leave (recomputed here by teacher forcing, one sentence at a time), save the </s> forced at the
    length limit; fairseq's rule gives the plain log-probability. The search itself changes: some
    outputs differ from fairseq's."""
    d = dictionary(60)
    model, sample = _model(d, seed=12, eos_boost=2.0), _sample(d, n=6, seed=13)
    settings = dict(beam_size=4, max_len_b=16, min_len=4, no_repeat_ngram_size=2)
    monkeypatch.setenv("BART_EXT_CONSTRAINT_SCORES", "renormalized")
    with torch.no_grad():
        ours = BeamSequenceGenerator([model], d, **settings).generate([model], sample)
    monkeypatch.setenv("BART_EXT_CONSTRAINT_SCORES", "fairseq")
    with torch.no_grad():
        plain = BeamSequenceGenerator([model], d, **settings).generate([model], sample)
    src = sample["net_input"]["src_tokens"]
    renormalised_somewhere = False
    for i, hyps in enumerate(ours):
        for h in hyps:
            tokens = h["tokens"].tolist()
            prev = torch.tensor([[d.eos(), *tokens[:-1]]])
            with torch.no_grad():
                logits = model(src[i:i + 1], sample["net_input"]["src_lengths"][i:i + 1], prev)[0]
            lprobs = model.get_normalized_probs((logits, None), log_probs=True)[0].double()
            for step, token in enumerate(tokens):
                row = lprobs[step].clone()
                row[d.pad()] = float("-inf")
                if step < settings["min_len"]:
                    row[d.eos()] = float("-inf")
                ruled_out = _blocked([d.eos(), *tokens[:step]], settings["no_repeat_ngram_size"])
                assert token not in ruled_out
                row[list(ruled_out)] = float("-inf")
                want = row[token] - torch.logsumexp(row, 0)
                if step == settings["max_len_b"]:  # the forced </s> keeps its plain log-probability
                    want = lprobs[step, token]
                renormalised_somewhere |= bool(want - lprobs[step, token] > 1e-3)
                assert abs(float(h["positional_scores"][step]) - float(want)) < 1e-4, (i, step)
    assert renormalised_somewhere, "the settings must rule out likely tokens somewhere"
    assert any(not torch.equal(a[0]["tokens"], b[0]["tokens"]) for a, b in zip(ours, plain))


def test_renormalized_constraint_scores_without_constraints_keep_the_outputs(monkeypatch):
    d = dictionary(60)
    model, sample = _model(d, seed=12), _sample(d, seed=13)
    settings = dict(beam_size=4, max_len_b=12)
    with torch.no_grad():
        plain = BeamSequenceGenerator([model], d, **settings).generate([model], sample)
        monkeypatch.setenv("BART_EXT_CONSTRAINT_SCORES", "renormalized")
        ours = BeamSequenceGenerator([model], d, **settings).generate([model], sample)
    for a, b in zip(ours, plain):
        for x, y in zip(a, b):
            assert torch.equal(x["tokens"], y["tokens"])
            # padding, and </s> at the first step (fairseq's default min_len 1), are ruled out here too:
            # their small probabilities move the scores a little (7e-5 at most with this model)
            assert torch.allclose(x["positional_scores"], y["positional_scores"], atol=2e-4)
            assert not torch.equal(x["positional_scores"], y["positional_scores"])


def test_renormalized_constraint_scores_refuse_fairseqs_loop(data_dir, monkeypatch):
    from fairseq.dataclass.configs import GenerationConfig

    from user_dir.bart_denoising import BartDenoisingTask

    monkeypatch.setenv("BART_EXT_CONSTRAINT_SCORES", "renormalized")
    task = BartDenoisingTask.from_data(data_dir / "bin", tokens_per_sample=32)
    model = _model(task.target_dictionary)
    monkeypatch.setenv("BART_EXT_GENERATOR", "fairseq")
    with pytest.raises(ValueError, match="BART_EXT_CONSTRAINT_SCORES=renormalized needs bart_ext's generator"):
        task.build_generator([model], GenerationConfig(beam=3))
    d = dictionary(60)
    model = _model(d)
    gen = BeamSequenceGenerator([model], d, beam_size=2, max_len_b=6, match_source_len=True)
    with pytest.raises(ValueError, match="match_source_len runs fairseq's loop"):
        gen.generate([model], _sample(d, n=2))
    monkeypatch.setenv("BART_EXT_CONSTRAINT_SCORES", "ctranslate2")
    with pytest.raises(ValueError, match="BART_EXT_CONSTRAINT_SCORES='ctranslate2'"):
        BeamSequenceGenerator([model], d, beam_size=2)


def test_diverse_beam_search_is_given_batch_positions_not_dataset_ids(data_dir):
    """fairseq's SequenceGenerator hands DiverseBeamSearch the sample's dataset ids, which it uses as rows of
    its per-sentence overlap counts: fairseq-generate --diverse-beam-groups failed on any batch whose ids
    were not 0..n-1 ("index 34 is out of bounds for dimension 0 with size 16"). Through the bart tasks a
    batch of ids 7, 3, 9, ... gives what fairseq gives the same batch numbered 0..n-1; the sample is kept."""
    from fairseq.dataclass.configs import GenerationConfig
    from fairseq.tasks import FairseqTask

    from user_dir.bart_denoising import BartDenoisingTask

    task = BartDenoisingTask.from_data(data_dir / "bin", tokens_per_sample=32)
    d = task.target_dictionary
    model = _model(d)
    numbered = _sample(d, n=4)
    ids = torch.tensor([7, 3, 9, 5])
    sample = {**numbered, "id": ids}
    settings = GenerationConfig(beam=4, diverse_beam_groups=2, diverse_beam_strength=0.5, max_len_b=10)
    gen = task.build_generator([model], settings)
    assert type(gen.search) is search.DiverseBeamSearch
    with torch.no_grad():
        ours = task.inference_step(gen, [model], sample)
        with pytest.raises(IndexError):  # what fairseq's own step does with these ids
            FairseqTask.inference_step(task, task.build_generator([model], settings), [model], sample)
        theirs = FairseqTask.inference_step(task, task.build_generator([model], settings), [model], numbered)
    assert sample["id"] is ids
    _assert_equal(ours, theirs)


def test_constrained_search_without_constraints_is_a_clear_error(data_dir):
    """fairseq-generate --constraints on binarized data (which holds no constraints) failed inside fairseq with
    "TypeError: 'NoneType' object is not iterable"; the bart tasks say where constraints come from."""
    from fairseq.dataclass.configs import GenerationConfig

    from user_dir.bart_denoising import BartDenoisingTask

    task = BartDenoisingTask.from_data(data_dir / "bin", tokens_per_sample=32)
    model = _model(task.target_dictionary)
    gen = task.build_generator([model], GenerationConfig(beam=2, constraints="ordered", max_len_b=6))
    with pytest.raises(ValueError, match="--constraints: this batch has no constraints \\(fairseq-interactive reads"):
        task.inference_step(gen, [model], _sample(task.target_dictionary, n=2))


def test_retain_dropout_keeps_dropout_at_inference_as_fairseq_does():
    """fairseq-generate --retain-dropout (Monte Carlo dropout) reaches the model through fairseq's
    prepare_for_inference_; our models ignored it and decoded without dropout. Now every dropout of a
    retained module stays on: the forward equals the training-mode forward from the same seed;
    --retain-dropout-modules keeps only the named classes', and a name that fits none is refused."""
    import copy

    from omegaconf import OmegaConf

    d = dictionary()
    torch.manual_seed(0)
    model = BartPreln.build_model(preln_args(dropout=0.3, attention_dropout=0.2, activation_dropout=0.1), fake_task(d))
    src = torch.randint(4, len(d), (3, 9))
    prev = torch.cat([torch.full((3, 1), d.eos()), src[:, :-1]], 1)

    def forward(m, seed=1):
        torch.manual_seed(seed)
        with torch.no_grad():
            return m(src, None, prev)[0]

    def for_inference(**generation):
        m = copy.deepcopy(model).eval()
        m.prepare_for_inference_(OmegaConf.create({"generation": {"beam": 1, "print_alignment": False, **generation}}))
        return m

    trained = forward(copy.deepcopy(model).train())
    plain = for_inference()
    assert torch.equal(forward(plain), forward(plain, seed=2))  # no dropout at inference by default
    assert not torch.allclose(forward(plain), trained)
    retained = for_inference(retain_dropout=True, retain_dropout_modules=None)
    torch.testing.assert_close(forward(retained), trained, rtol=0, atol=1e-6)
    assert not torch.equal(forward(retained), forward(retained, seed=2))
    decoder_only = for_inference(retain_dropout=True, retain_dropout_modules='["BartDecoder", "DecoderLayer"]')
    kept = {type(m).__name__ for m in decoder_only.modules() if getattr(m, "retain_dropout", False)}
    assert kept == {"BartDecoder", "DecoderLayer"}
    assert not torch.equal(forward(decoder_only), forward(decoder_only, seed=2))
    assert not torch.allclose(forward(decoder_only), trained)
    with pytest.raises(ValueError, match=r"--retain-dropout-modules TransformerDecoderLayer: the modules with dropout "
                                         r"in BartPreln are BartDecoder, BartEncoder, DecoderLayer, EncoderLayer, "
                                         r"MultiheadAttention"):
        for_inference(retain_dropout=True, retain_dropout_modules=["TransformerDecoderLayer"])
