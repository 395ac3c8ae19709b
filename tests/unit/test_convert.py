"""scripts/convert.py: transformers <-> bart_ext <-> transformers, tokenizers, generation, CTranslate2, bad input."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from bart_ext.convert.commands import hf_generation_config  # noqa: E402
from bart_ext.convert.hf import ConversionError  # noqa: E402
from scripts.convert import main as convert  # noqa: E402

WIDTH = dict(d_model=12, encoder_layers=2, decoder_layers=1, encoder_attention_heads=3, decoder_attention_heads=3,
             encoder_ffn_dim=14, decoder_ffn_dim=14, max_position_embeddings=64)


@pytest.fixture(scope="module")
def texts(data_dir) -> list[str]:
    lines = [x for x in (data_dir / "raw" / "valid.txt").read_text(encoding="utf-8").splitlines() if len(x) > 40]
    # real text of unequal lengths, plus words GPT-2 splits oddly and characters outside ASCII
    return [lines[0][:300], lines[5][:120], "Zxqvbw floofberg ünïcödé — 😀 the  end!", lines[9][:60]]


def make_hf_folder(path: Path, gpt2: Path, layout: str, seed: int = 0) -> Path:
    """A randomly initialised transformers BART/mBART of fairseq BART's vocabulary layout (specials, every
    GPT-2 token, <mask> last), with its byte-level BPE tokenizer."""
    path.mkdir(parents=True)
    tokens = sorted(json.loads((gpt2 / "encoder.json").read_text(encoding="utf-8")).items(), key=lambda kv: kv[1])
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for tok, _ in tokens:
        vocab[tok] = len(vocab)
    vocab["<mask>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text((gpt2 / "vocab.bpe").read_text(encoding="utf-8"), encoding="utf-8")
    transformers.BartTokenizer.from_pretrained(str(path)).save_pretrained(str(path))
    config_cls, model_cls = {"mbart": (transformers.MBartConfig, transformers.MBartForConditionalGeneration),
                             "bart": (transformers.BartConfig, transformers.BartForConditionalGeneration)}[layout]
    torch.manual_seed(seed)
    model = model_cls(config_cls(vocab_size=len(vocab), init_std=0.2, **WIDTH))
    model.save_pretrained(str(path))
    return path


def fairseq_ids(folder: Path, text: str) -> list[int]:
    """``<s>`` + fairseq's gpt2 BPE with ``folder``'s files + ``folder/dict.txt`` (+ ``</s>``)."""
    from fairseq.data import Dictionary
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    bpe = get_encoder(str(folder / "encoder.json"), str(folder / "vocab.bpe"))
    d = Dictionary.load(str(folder / "dict.txt"))
    return [0] + d.encode_line(" ".join(map(str, bpe.encode(text))), add_if_not_exist=False).tolist()


def batch(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), 1)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out  # right-padded, as transformers pads


def shifted(tokens: torch.Tensor) -> torch.Tensor:
    prev = torch.cat([torch.full((tokens.size(0), 1), 2), tokens[:, :-1]], 1)
    return prev.masked_fill(tokens.eq(1), 1)


def load_ours(checkpoint: Path, data: Path):
    import user_dir  # noqa: F401
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                     arg_overrides={"data": str(data)})
    return models[0].eval(), task


def load_hf(folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(folder)).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(folder))


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("layout", ["mbart", "bart"])
def test_hf_round_trip(tmp_path, data_dir, texts, layout):
    src = make_hf_folder(tmp_path / "hf", data_dir / "gpt2", layout)
    convert(["from-hf", str(src), str(tmp_path / "ours")])
    ckpt = tmp_path / "ours" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    assert state["cfg"]["model"]["post_ln"] is (layout == "bart")
    convert(["to-hf", str(ckpt), str(tmp_path / "back")])

    hf_model, hf_tok = load_hf(src)
    back_model, back_tok = load_hf(tmp_path / "back")
    assert type(back_model) is type(hf_model)
    assert json.loads((tmp_path / "back" / "config.json").read_text())["normalize_before"] is (layout == "mbart")
    # the weights, bit-equal after the round trip
    a, b = hf_model.state_dict(), back_model.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same ids from transformers' tokenizer (before and after) and from fairseq's gpt2 BPE + dict.txt
    ids = [hf_tok(t)["input_ids"] for t in texts]
    assert ids == [back_tok(t)["input_ids"] for t in texts]
    assert ids == [fairseq_ids(tmp_path / "ours", t) for t in texts]
    # the same logits on a right-padded batch of real text
    ours, _ = load_ours(ckpt, tmp_path / "ours")
    src_tokens = batch(ids)
    prev = shifted(src_tokens)
    real = prev.ne(1)
    with torch.no_grad():
        mine = ours(src_tokens, real.sum(1), prev)[0]
        theirs = hf_model(input_ids=src_tokens, attention_mask=src_tokens.ne(1).long(), decoder_input_ids=prev,
                          decoder_attention_mask=real.long()).logits
    assert max_rel(mine[real], theirs[real]) < 1e-5


def test_round_trip_keeps_the_source_tokenizers_prefix_space(tmp_path, data_dir, texts):
    """A source tokenizer that spaces the first word (a model trained as bart_ext trains) exports so again
    after from-hf, and bart_ext.load encodes as it does; a BART tokenizer's (none) is the other case above."""
    import bart_ext

    src = make_hf_folder(tmp_path / "hf", data_dir / "gpt2", "mbart")
    transformers.BartTokenizer.from_pretrained(str(src), add_prefix_space=True).save_pretrained(str(src))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(src))
    convert(["from-hf", str(src), str(tmp_path / "ours")])
    spaced, plain = fairseq_ids(tmp_path / "ours", " " + texts[1]), fairseq_ids(tmp_path / "ours", texts[1])
    assert hf_tok(texts[1])["input_ids"] == spaced != plain
    convert(["to-hf", str(tmp_path / "ours" / "checkpoint.pt"), str(tmp_path / "back")])
    back_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    assert [back_tok(t)["input_ids"] for t in texts] == [hf_tok(t)["input_ids"] for t in texts]
    model = bart_ext.load(tmp_path / "ours" / "checkpoint.pt")
    assert [model.encode(t).tolist() for t in texts] == [hf_tok(t)["input_ids"] for t in texts]


def make_hf_classifier(path: Path, gpt2: Path, layout: str, num_labels: int, **config) -> Path:
    """``make_hf_folder``'s tokenizer with a randomly initialised ``*ForSequenceClassification``
    (bart-large-mnli's kind: its tokenizer joins a pair as RoBERTa's <s> A </s></s> B </s>)."""
    make_hf_folder(path, gpt2, layout)
    family = {"mbart": "MBart", "bart": "Bart"}[layout]
    cfg = getattr(transformers, family + "Config")(vocab_size=json.loads((path / "config.json").read_text())["vocab_size"],
                                                   init_std=0.2, num_labels=num_labels, **WIDTH, **config)
    torch.manual_seed(3)
    getattr(transformers, family + "ForSequenceClassification")(cfg).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("layout", ["bart", "mbart"])
def test_a_transformers_classifier_imports_with_its_head_labels_and_pair_layout(tmp_path, data_dir, texts, layout):
    """from-hf of a *ForSequenceClassification folder (facebook/bart-large-mnli's kind) was refused ("weights
    bart_ext has no place for: classification_head..."). It is now a sentence_prediction checkpoint whose
    head, labels and pair layout give transformers' logits through bart_ext.load(...).predict, and to-hf
    writes the same folder back."""
    import bart_ext

    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    src = make_hf_classifier(tmp_path / "hf", data_dir / "gpt2", layout, 3, id2label=labels,
                             label2id={v: k for k, v in labels.items()})
    convert(["from-hf", str(src), str(tmp_path / "ours"), "--head", "mnli"])
    assert (tmp_path / "ours" / "label" / "dict.txt").read_text().split() == ["contradiction", "1", "neutral", "1",
                                                                                "entailment", "1"]
    model = bart_ext.load(tmp_path / "ours" / "checkpoint.pt")
    assert (model.task.cfg.init_token, model.task.cfg.separator_token) == (0, 2)  # RoBERTa's pair layout
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(str(src)).eval()
    inputs = [texts[1], (texts[0][:80], texts[3]), (texts[2], texts[1])]
    for item in inputs:
        ids = tok(*item if isinstance(item, tuple) else (item,))["input_ids"]
        with torch.no_grad():
            want = theirs(input_ids=torch.tensor([ids])).logits[0]
        got = model.predict("mnli", item)
        assert max_rel(got, want) < 1e-5, (item, got, want)
    assert float(want.abs().max()) > 0.1  # logits of a size that a layout or weight slip would move
    # scripts/classify.py reads texts as the source tokenizer did (no space before the first word here; it
    # put one before every text, as for a model trained here) and labels them as transformers does
    from bart_ext.classify.predict import open_classifier
    from scripts.classify import main as classify

    assert open_classifier(tmp_path / "ours" / "checkpoint.pt")[3] is False
    (tmp_path / "in.txt").write_text("".join(("\t".join(x) if isinstance(x, tuple) else x) + "\n" for x in inputs))
    with torch.no_grad():
        best = [theirs(input_ids=torch.tensor([tok(*x if isinstance(x, tuple) else (x,))["input_ids"]])).logits[0].argmax()
                for x in inputs]
    import scripts.classify as classify_script

    seen = []
    real = classify_script.predict_sentences

    def spy(model, task, head, sentences, encode, batch_size):
        seen.append(encode)
        return real(model, task, head, sentences, encode, batch_size)

    classify_script.predict_sentences = spy
    try:
        got = classify(["--path", str(tmp_path / "ours" / "checkpoint.pt"), str(tmp_path / "in.txt")])
    finally:
        classify_script.predict_sentences = real
    assert got == [labels[int(i)] for i in best]
    first = tok(texts[1], add_special_tokens=False)["input_ids"]  # ids = fairseq symbols after from-hf
    assert seen[0](texts[1]).split() == [str(i) for i in first]  # "Handling", not " Handling"
    convert(["to-hf", str(tmp_path / "ours" / "checkpoint.pt"), str(tmp_path / "back")])
    back = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "back")).eval()
    a, b = theirs.state_dict(), back.state_dict()
    assert type(back) is type(theirs) and set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert back.config.id2label == labels
    back_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    assert [back_tok(x, y)["input_ids"] for x, y in inputs[1:]] == [tok(x, y)["input_ids"] for x, y in inputs[1:]]
    if layout == "bart":  # CTranslate2 wrote a generator without the head (no error) before
        with pytest.raises(SystemExit, match=r"a classifier \(BartForSequenceClassification\); CTranslate2 converts"):
            convert(["to-ct2", str(tmp_path / "ours" / "checkpoint.pt"), str(tmp_path / "ct2")])
        assert not (tmp_path / "ct2").exists()


def test_a_transformers_regression_head_imports_and_others_are_refused(tmp_path, data_dir, texts):
    """num_labels 1 (STS-B's kind) is a --regression-target checkpoint without a label dictionary; a
    multi-label head (which sentence_prediction cannot train) is refused naming problem_type, nothing written."""
    import bart_ext

    src = make_hf_classifier(tmp_path / "hf", data_dir / "gpt2", "mbart", 1)
    convert(["from-hf", str(src), str(tmp_path / "ours")])
    model = bart_ext.load(tmp_path / "ours" / "checkpoint.pt")
    assert model.task.cfg.regression_target and not (tmp_path / "ours" / "label").exists()
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(str(src)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    with torch.no_grad():
        want = theirs(input_ids=torch.tensor([tok(texts[0], texts[1])["input_ids"]])).logits[0]
    assert max_rel(model.predict("sentence_classification_head", (texts[0], texts[1])), want) < 1e-5
    multi = make_hf_classifier(tmp_path / "multi", data_dir / "gpt2", "bart", 4,
                               problem_type="multi_label_classification")
    with pytest.raises(SystemExit, match=r"problem_type is 'multi_label_classification'"):
        convert(["from-hf", str(multi), str(tmp_path / "refused")])
    with pytest.raises(SystemExit, match=r"--head 'mnli' given, but the folder's weights have no classification_head"):
        convert(["from-hf", str(make_hf_folder(tmp_path / "plain", data_dir / "gpt2", "bart")), str(tmp_path / "refused"),
                 "--head", "mnli"])
    assert not (tmp_path / "refused").exists()


def write_ours(path: Path, data: Path, post_ln: bool = False, seed: int = 0) -> Path:
    """A bart_ext checkpoint on the corpus dictionary of the prepared data (smaller than GPT-2's)."""
    from bart_ext import model as core
    from bart_ext.convert.fairseq_checkpoint import write_checkpoint
    from bart_ext.convert.hf import ModelShape
    from bart_ext.convert.vocab import read_dictionary

    n = len(read_dictionary(data / "dict.txt")) + 1  # + <mask>
    shape = ModelShape(vocab_size=n, embed_dim=12, ffn_dim=14, encoder_layers=2, decoder_layers=1,
                       attention_heads=3, max_positions=64, post_ln=post_ln, dropout=0.0)
    torch.manual_seed(seed)
    model = core.BartModel(core.BartConfig(vocab_size=n, embed_dim=12, ffn_dim=14, encoder_layers=2, decoder_layers=1,
                                           attention_heads=3, max_positions=64, normalize_before=not post_ln))
    write_checkpoint(path, model.state_dict(), shape, data.resolve(), Path(__file__).resolve().parents[2] / "user_dir")
    return path


def test_corpus_dictionary_exports_with_fairseq_distribution(tmp_path, data_dir, texts):
    """A model on a dictionary smaller than GPT-2's: through transformers, the same next-token distribution
    over its dictionary as in fairseq, for text with tokens outside it, and nothing outside it generated."""
    data = data_dir / "bin"
    ckpt = write_ours(tmp_path / "ours.pt", data)
    convert(["to-hf", str(ckpt), str(tmp_path / "hf")])
    hf_model, hf_tok = load_hf(tmp_path / "hf")
    ours, task = load_ours(ckpt, data)
    n = len(task.source_dictionary)
    fs = [fairseq_ids(data, " " + t) for t in texts]  # as bart_ext's data preparation encodes text
    hf = [hf_tok(t)["input_ids"] for t in texts]
    assert any(3 in r for r in fs), "the texts must hold tokens outside the corpus dictionary"
    assert [[t if t < n else 3 for t in r] for r in hf] == fs  # outside the dictionary: its own id, <unk>'s row
    with torch.no_grad():
        prev = shifted(batch(fs))
        real = prev.ne(1)
        mine = torch.log_softmax(ours(batch(fs), real.sum(1), prev)[0], -1)
        theirs = torch.log_softmax(hf_model(input_ids=batch(hf), attention_mask=batch(hf).ne(1).long(),
                                            decoder_input_ids=shifted(batch(hf)),
                                            decoder_attention_mask=real.long()).logits, -1)
        assert theirs.size(-1) > n
        assert torch.isneginf(theirs[real][:, n:]).all()
        assert max_rel(mine[real], theirs[real][:, :n]) < 1e-5
        out = hf_model.generate(input_ids=batch(hf), attention_mask=batch(hf).ne(1).long(), max_new_tokens=20)
    assert int(out.max()) < n


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A tiny model trained for a few dozen steps to copy summaries (peaked, non-random distributions)."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    tmp = tmp_path_factory.mktemp("trained")
    data = data_dir / "bin"
    ckpt = write_ours(tmp / "init.pt", data)
    model, _ = load_ours(ckpt, data)
    targets = MMapIndexedDataset(str(data_dir.parent / "aclsum_summ" / "bin" / "train.source-target.target"))
    rows = [[0, *targets[i][:20].tolist(), 2] for i in range(26)]
    src = batch(rows[:16])
    prev = shifted(src)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    torch.manual_seed(0)
    for _ in range(80):
        logits = model(src, None, prev)[0]
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), src.view(-1), ignore_index=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 3.0
    state = torch.load(ckpt, weights_only=False)
    state["model"] = model.state_dict()
    torch.save(state, tmp / "trained.pt")
    return tmp / "trained.pt", data, batch(rows[10:])


PRESETS = [{"beam": 1, "max_len_b": 30, "min_len": 5},
           {"beam": 4, "lenpen": 1.0, "max_len_b": 30, "min_len": 5, "no_repeat_ngram_size": 3},
           {"beam": 6, "lenpen": 2.0, "max_len_b": 40, "min_len": 10, "no_repeat_ngram_size": 3}]


def fairseq_generate(model, task, src: torch.Tensor, preset: dict) -> list[list[int]]:
    from fairseq.sequence_generator import SequenceGenerator

    gen = SequenceGenerator([model], task.target_dictionary, beam_size=preset["beam"], max_len_b=preset["max_len_b"],
                            min_len=preset["min_len"], len_penalty=preset.get("lenpen", 1.0),
                            no_repeat_ngram_size=preset.get("no_repeat_ngram_size", 0))
    with torch.no_grad():  # <s> forced first, as bart_summarization's --force-bos does
        hyps = gen.generate([model], {"net_input": {"src_tokens": src, "src_lengths": src.ne(1).sum(1)}},
                            prefix_tokens=src.new_zeros(src.size(0), 1))
    return [h[0]["tokens"].tolist() for h in hyps]


@pytest.mark.parametrize("preset", PRESETS, ids=["greedy", "beam4_ngram3", "beam6_lenpen2"])
def test_transformers_generate_equals_fairseq(tmp_path, trained, preset):
    ckpt, data, src = trained
    model, task = load_ours(ckpt, data)
    expected = fairseq_generate(model, task, src, preset)
    convert(["to-hf", str(ckpt), str(tmp_path / "hf")])
    hf_model, _ = load_hf(tmp_path / "hf")
    config = transformers.GenerationConfig(**hf_generation_config(preset))
    with torch.no_grad():
        out = hf_model.generate(input_ids=src, attention_mask=src.ne(1).long(), generation_config=config)
    got = [[t for t in row[1:] if t != 1] for row in out.tolist()]  # without the decoder start </s>, padding
    assert got == expected


@pytest.mark.parametrize("beam,lenpen,max_len_b,ngram", [(4, 1.0, 12, 3), (6, 1.0, 21, 3), (6, 2.0, 21, 0)])
def test_transformers_generate_like_fairseq_at_the_length_limit(tmp_path, trained, beam, lenpen, max_len_b, ngram):
    """Where beams reach max_len_b, generate_like_fairseq scores the forced </s> (and <s>) as fairseq does:
    fairseq's best hypothesis and its score; generate with the exported config alone scores them 0."""
    from fairseq.sequence_generator import SequenceGenerator

    from bart_ext.convert.hf_generate import generate_like_fairseq

    ckpt, data, src = trained
    model, task = load_ours(ckpt, data)
    preset = {"beam": beam, "lenpen": lenpen, "max_len_b": max_len_b, "min_len": 5, "no_repeat_ngram_size": ngram}
    gen = SequenceGenerator([model], task.target_dictionary, beam_size=beam, max_len_b=max_len_b, min_len=5,
                            len_penalty=lenpen, no_repeat_ngram_size=ngram)
    with torch.no_grad():
        hyps = gen.generate([model], {"net_input": {"src_tokens": src, "src_lengths": src.ne(1).sum(1)}},
                            prefix_tokens=src.new_zeros(src.size(0), 1))
    expected = [[h["tokens"].tolist() for h in hs] for hs in hyps]
    assert any(len(h) == max_len_b + 1 for hs in expected for h in hs)  # some end on fairseq's forced </s>
    convert(["to-hf", str(ckpt), str(tmp_path / "hf")])
    hf_model, _ = load_hf(tmp_path / "hf")
    config = transformers.GenerationConfig(**hf_generation_config(preset), num_return_sequences=beam,
                                           output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        out = generate_like_fairseq(hf_model, config, input_ids=src, attention_mask=src.ne(1).long())
        plain = hf_model.generate(input_ids=src, attention_mask=src.ne(1).long(), generation_config=config)
    # the best of each n-best list (below it fairseq keeps the first hypotheses to finish, transformers the best)
    got = [[t for t in row[1:] if t != 1] for row in out.sequences.tolist()[::beam]]
    assert got == [hs[0] for hs in expected]
    scores = torch.stack([hs[0]["score"] for hs in hyps])
    assert torch.allclose(out.sequences_scores[::beam], scores, atol=1e-4)
    assert not torch.allclose(plain.sequences_scores[::beam], scores, atol=1e-4)  # forced tokens scored 0


def test_ctranslate2_greedy_equals_fairseq(tmp_path, trained):
    ctranslate2 = pytest.importorskip("ctranslate2")
    ckpt, data, src = trained
    model, task = load_ours(ckpt, data)
    preset = PRESETS[0]
    expected = fairseq_generate(model, task, src, preset)
    convert(["to-ct2", str(ckpt), str(tmp_path / "ct2")])
    assert json.loads((tmp_path / "ct2" / "config.json").read_text())["decoder_start_token"] == "</s>"
    vocab = json.loads((tmp_path / "ct2" / "shared_vocabulary.json").read_text(encoding="utf-8"))
    index = {tok: i for i, tok in enumerate(vocab)}
    translator = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    sources = [[vocab[t] for t in row if t != 1] for row in src.tolist()]
    results = translator.translate_batch(sources, target_prefix=[["<s>"]] * len(sources), beam_size=1,
                                         max_decoding_length=preset["max_len_b"],
                                         min_decoding_length=preset["min_len"], return_end_token=True)
    assert [[index[t] for t in r.hypotheses[0]] for r in results] == expected



@pytest.mark.parametrize("beam,lenpen,max_len_b", [(4, 1.0, 12), (4, 1.0, 21), (6, 2.0, 21), (6, 1.0, 30)])
def test_ctranslate2_beam_like_fairseq_at_the_length_limit(tmp_path, trained, beam, lenpen, max_len_b):
    """Beam search without n-gram blocking or minimum length: translate_like_fairseq gives fairseq's
    output, also where beams reach max_len_b (the model copies 20-token summaries)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from bart_ext.convert.ct2 import translate_like_fairseq

    ckpt, data, src = trained
    model, task = load_ours(ckpt, data)
    preset = {"beam": beam, "lenpen": lenpen, "max_len_b": max_len_b, "min_len": 1}
    expected = fairseq_generate(model, task, src, preset)
    at_limit = sum(len(e) == max_len_b + 1 for e in expected)  # ended by fairseq's forced </s>
    assert at_limit > 0 if max_len_b < 30 else at_limit == 0, at_limit  # 30: all end on their own
    convert(["to-ct2", str(ckpt), str(tmp_path / "ct2")])
    vocab = json.loads((tmp_path / "ct2" / "shared_vocabulary.json").read_text(encoding="utf-8"))
    index = {tok: i for i, tok in enumerate(vocab)}
    translator = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    sources = [[vocab[t] for t in row if t != 1] for row in src.tolist()]
    got = translate_like_fairseq(translator, sources, beam=beam, max_len=max_len_b, lenpen=lenpen)
    assert [[index[t] for t in h] for h in got] == expected

def test_tokenizer_cuts_and_spaces_text_as_our_data(tmp_path, data_dir, texts):
    """A bart_ext checkpoint's tokenizer gives the ids its fine-tuning data had: a space before the first
    word (bart_ext's data preparation), sources cut to the task's max_source_positions as
    bart_summarization's truncate_source cuts them; --no-prefix-space gives GPT-2 BPE's plain encoding."""
    from bart_ext.convert.vocab import read_dictionary
    from bart_ext.summarization_data import source_length_limit

    data = data_dir / "bin"
    n = len(read_dictionary(data / "dict.txt")) + 1  # + <mask>; tokens outside it are <unk> in fairseq

    def as_fairseq(ids: list[int]) -> list[int]:
        return [t if t < n else 3 for t in ids]

    ckpt = write_ours(tmp_path / "ours.pt", data)  # 64 positions; task bart_denoising (max_source_positions 1024)
    state = torch.load(ckpt, weights_only=False)
    state["cfg"]["task"].update(_name="bart_summarization", truncate_source=True, max_source_positions=24)
    torch.save(state, tmp_path / "summ.pt")
    long_text = " ".join(texts)
    full = fairseq_ids(data, " " + long_text)
    assert len(full) > 64 and fairseq_ids(data, long_text)[1] != full[1]  # the space changes the first token
    for name, limit in (("ours", 64), ("summ", 24)):
        convert(["to-hf", str(tmp_path / f"{name}.pt"), str(tmp_path / name)])
        tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / name))
        assert tok.model_max_length == limit
        # bart_summarization's load_dataset: <s> + the first limit - 2 tokens + </s>
        assert as_fairseq(tok(long_text, truncation=True)["input_ids"]) == full[: limit - 1] + [2]
        assert [as_fairseq(tok(t)["input_ids"]) for t in texts] == [fairseq_ids(data, " " + t) for t in texts]
    cfg = state["cfg"]["task"]
    assert source_length_limit(cfg, 64) == 24
    assert source_length_limit({**cfg, "truncate_source": False}, 64) == 64
    assert source_length_limit({**cfg, "max_source_positions": 1024}, 64) == 64
    convert(["to-hf", str(ckpt), str(tmp_path / "plain"), "--no-prefix-space"])
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "plain"))
    assert [as_fairseq(tok(t)["input_ids"]) for t in texts] == [fairseq_ids(data, t) for t in texts]


def test_generation_config_follows_fairseq(tmp_path, trained):
    ckpt, _, _ = trained
    convert(["to-hf", str(ckpt), str(tmp_path / "hf"), "--preset", "xsum"])
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["decoder_start_token_id"] == 2 and gen["forced_bos_token_id"] == 0
    lengths = (gen["num_beams"], gen["max_new_tokens"], gen["min_new_tokens"], gen["no_repeat_ngram_size"])
    assert lengths == (6, 61, 10, 3)
    with pytest.raises(ConversionError, match="max_len_a"):
        hf_generation_config({"beam": 4, "max_len_a": 1})


# ---- bad input: one clear error naming the file and the field, nothing written

def test_refuses_a_folder_that_is_not_bart(tmp_path, data_dir):
    src = make_hf_folder(tmp_path / "hf", data_dir / "gpt2", "bart")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(SystemExit, match=r"config.json: model_type is 't5'"):
        convert(["from-hf", str(src), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field,value", [("scale_embedding", True), ("activation_function", "relu"),
                                         ("decoder_ffn_dim", 16)])
def test_refuses_configs_we_cannot_represent(tmp_path, data_dir, field, value):
    src = make_hf_folder(tmp_path / "hf", data_dir / "gpt2", "mbart")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(SystemExit, match=field):
        convert(["from-hf", str(src), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_refuses_missing_tokenizer_and_logits_bias(tmp_path, data_dir):
    from safetensors.torch import load_file, save_file

    src = make_hf_folder(tmp_path / "hf", data_dir / "gpt2", "mbart")
    merges, joined = (src / "merges.txt").read_bytes(), (src / "tokenizer.json").read_bytes()
    (src / "merges.txt").unlink()
    (src / "tokenizer.json").unlink()  # which holds the merges too (next test)
    with pytest.raises(SystemExit, match=r"merges.txt: not found"):
        convert(["from-hf", str(src), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    (src / "merges.txt").write_bytes(merges)
    (src / "tokenizer.json").write_bytes(joined)
    weights = load_file(str(src / "model.safetensors"))
    weights["final_logits_bias"][0, 7] = 0.5
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SystemExit, match=r"final_logits_bias is non-zero \(entry 7"):
        convert(["from-hf", str(src), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_json_alone_imports_as_vocab_json_and_merges_txt(tmp_path, data_dir, texts):
    """transformers 5's save_pretrained writes tokenizer.json without vocab.json and merges.txt: from-hf
    read only those two, and refused such a folder ("vocab.json: not found"). Now it takes the same
    tables from tokenizer.json (merges as pairs or as "a b" strings) and writes the same fairseq files;
    a tokenizer.json that fairseq's gpt2 BPE would not reproduce is refused naming the field."""
    src = make_hf_folder(tmp_path / "hf", data_dir / "gpt2", "mbart")
    convert(["from-hf", str(src), str(tmp_path / "both")])
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(src))
    (src / "vocab.json").unlink()
    (src / "merges.txt").unlink()
    joined = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    for style in ("pairs", "strings"):
        merges = [m if isinstance(m, list) else m.split(" ") for m in joined["model"]["merges"]]
        joined["model"]["merges"] = merges if style == "pairs" else [" ".join(m) for m in merges]
        (src / "tokenizer.json").write_text(json.dumps(joined), encoding="utf-8")
        out = tmp_path / style
        convert(["from-hf", str(src), str(out)])
        for name in ("dict.txt", "encoder.json"):
            assert (out / name).read_bytes() == (tmp_path / "both" / name).read_bytes(), name
        assert ((out / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
                == (tmp_path / "both" / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:])
        assert [fairseq_ids(out, t) for t in texts] == [hf_tok(t)["input_ids"] for t in texts]
    for field, value, named in (("normalizer", {"type": "Lowercase"}, "normalizer is 'Lowercase'"),
                                ("model", {**joined["model"], "end_of_word_suffix": "</w>"},
                                 "model.end_of_word_suffix is '</w>'"),
                                ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer is {'type': 'Whitespace'}")):
        (src / "tokenizer.json").write_text(json.dumps({**joined, field: value}), encoding="utf-8")
        with pytest.raises(SystemExit, match=re.escape(f"tokenizer.json: {named}")):
            convert(["from-hf", str(src), str(tmp_path / "refused")])
        assert not (tmp_path / "refused").exists()


def test_refuses_a_dictionary_of_another_size(tmp_path, data_dir):
    ckpt = write_ours(tmp_path / "ours.pt", data_dir / "bin")
    other = tmp_path / "other"
    other.mkdir()
    lines = (data_dir / "bin" / "dict.txt").read_text().splitlines()
    (other / "dict.txt").write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(SystemExit, match=r"embedding rows, but .*other/dict.txt with <mask> has"):
        convert(["to-hf", str(ckpt), str(tmp_path / "out"), "--data", str(other)])
    assert not (tmp_path / "out").exists()


def test_refuses_a_truncated_checkpoint_naming_it(tmp_path, data_dir):
    ckpt = write_ours(tmp_path / "ours.pt", data_dir / "bin")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[:4096])  # an interrupted copy
    with pytest.raises(SystemExit, match=rf"to-hf: {cut}: not a readable fairseq checkpoint: a zip archive without"):
        convert(["to-hf", str(cut), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_fill_mask_lets_a_span_take_any_length(tmp_path, data_dir):
    """bart_ext.load(...).fill_mask: fairseq's default keeps the input's length (a <mask> becomes one
    token); match_source_len=False lets the span take any length, as text infilling trained it to."""
    import bart_ext

    model = bart_ext.load(write_ours(tmp_path / "ours.pt", data_dir / "bin", seed=1))
    text = "We propose a <mask> for parsing."
    src = model.encode(text)
    lengths = {}
    for match in (True, False):
        hyps = model.generate([src], beam=3, match_source_len=match, max_len_b=20)[0]
        filled = model.fill_mask([text], topk=3, match_source_len=match, max_len_b=20)[0]
        assert filled == [(model.decode(h["tokens"]), float(h["score"])) for h in hyps[:3]]
        lengths[match] = {len(h["tokens"]) for h in hyps[:3]}
    assert lengths[True] == {len(src) + 1} and max(lengths[False]) > len(src) + 1  # + the forced <s>
    assert model.fill_mask([text], topk=3, max_len_b=20) == model.fill_mask([text], topk=3, match_source_len=True,
                                                                            max_len_b=20)


def test_hub_takes_one_string_as_fairseqs_hub_and_refuses_empty_input(tmp_path, data_dir):
    """A str gets one result (fairseq's hub does this; before, summarize("text") summarised each
    character); an empty text, a non-positive topk or beam and a non-str entry are refused naming them."""
    import bart_ext

    model = bart_ext.load(write_ours(tmp_path / "ours.pt", data_dir / "bin", seed=1))
    text, masked = "We propose a parser for trees.", "We propose a <mask> for parsing."
    one = model.summarize(text, preset="xsum", max_len_b=8, min_len=2)
    assert isinstance(one, str) and [one] == model.summarize([text], preset="xsum", max_len_b=8, min_len=2)
    filled = model.fill_mask(masked, topk=2, max_len_b=20)
    assert filled == model.fill_mask([masked], topk=2, max_len_b=20)[0] and len(filled) == 2
    assert model.summarize([], preset="xsum") == [] and model.fill_mask([], topk=2) == []
    with pytest.raises(ValueError, match=r"unknown generation preset 'nope'"):
        model.summarize([], preset="nope")
    with pytest.raises(ValueError, match=r"summarize: text 1 is empty \(of 2\)"):
        model.summarize([text, "  "])
    with pytest.raises(ValueError, match=r"fill_mask: text 0 is empty"):
        model.fill_mask("")
    with pytest.raises(ValueError, match=r"fill_mask: topk must be a positive integer, not 0"):
        model.fill_mask(masked, topk=0)
    for beam in (0, 2.5, True):  # beam=0 stopped in fairseq's search with ZeroDivisionError
        with pytest.raises(ValueError, match=rf"generation setting beam must be a positive integer, not {beam!r}"):
            model.sample(text, beam=beam)
    with pytest.raises(TypeError, match=r"predict: text 0 is not a str but int"):
        model.predict("head", [3])
    d = model.dictionary  # a dictionary without <mask>, as fairseq's translation task builds one
    del d.indices["<mask>"]
    with pytest.raises(ValueError, match=r"<mask> in 'We propose a <mask> for parsing.', but this model's dictionary "
                                         r"has no <mask>"):  # it was encoded as <unk> and "filled"
        model.fill_mask(masked, topk=2)
    if not torch.cuda.is_available():  # torch's "AssertionError: Torch not compiled with CUDA enabled" before
        with pytest.raises(ValueError, match=r"bart_ext.load\(device='cuda'\): this machine has no CUDA device"):
            bart_ext.load(tmp_path / "ours.pt", device="cuda")


def test_hub_sample_and_translate_as_fairseqs_bart_hub(tmp_path, data_dir, caplog):
    """fairseq's README calls bart.sample(lines, beam=4, lenpen=2.0, ...): the same call works here, giving the
    best hypothesis of generate (beam 1 unless given; translate: 5), the same as summarize with those
    settings, a str for a str, and with verbose=True fairseq's S/H log lines."""
    import logging

    import bart_ext
    from bart_ext.summarization_data import load_preset

    model = bart_ext.load(write_ours(tmp_path / "ours.pt", data_dir / "bin", seed=2))
    texts = ["We propose a parser for trees.", "Our results improve the state of the art."]
    settings = dict(lenpen=2.0, max_len_b=12, min_len=3, no_repeat_ngram_size=3)
    for beam, method in ((1, model.sample), (5, model.translate)):
        best = [model.decode(h[0]["tokens"]) for h in model.generate([model.encode(t) for t in texts], beam=beam,
                                                                      **settings)]
        assert method(texts, **settings) == best and method(texts, beam=beam, **settings) == best
        assert method(texts[1], **settings) == best[1]
    beams = [model.sample(texts, beam=b, **settings) for b in (1, 4)]
    assert all(isinstance(t, str) and t for row in beams for t in row)
    xsum = {**load_preset("xsum"), "max_len_b": 12}
    assert model.sample(texts, **xsum) == model.summarize(texts, preset="xsum", max_len_b=12)
    with caplog.at_level(logging.INFO, logger="bart_ext.hub"):
        out = model.sample(texts[0], beam=2, verbose=True, max_len_b=6)
    assert f"S\t{texts[0]}" in caplog.text and re.search(rf"H\t-?[0-9.]+\t{re.escape(out)}", caplog.text)
    with pytest.raises(ValueError, match=r"sample: text 1 is empty \(of 2\)"):
        model.sample([texts[0], " "])


def test_hub_decodes_and_classifies_many_texts_in_batches(tmp_path, data_dir, texts, capsys):
    """summarize, sample, fill_mask and predict sent every text through the model as one batch (a test set
    padded to its longest document, beam times over); now batch_size texts at a time, longest first, the
    results in the input's order and the same as one batch."""
    import bart_ext

    model = bart_ext.load(write_ours(tmp_path / "ours.pt", data_dir / "bin", seed=4))
    many = [t[: 20 + 13 * i] for i, t in enumerate(texts * 2)]
    calls = []
    step = model.task.inference_step

    def counted(generator, models, sample, **kwargs):
        calls.append(len(sample["id"]))
        return step(generator, models, sample, **kwargs)

    model.task.inference_step = counted
    settings = dict(beam=2, max_len_b=6, min_len=2)
    one = model.sample(many, **settings)
    assert calls == [len(many)]
    calls.clear()
    assert model.sample(many, batch_size=3, **settings) == one and calls == [3, 3, 2]
    assert model.sample(many[5], **settings) == one[5]
    model.model.register_classification_head("c", num_classes=2)
    assert torch.allclose(model.predict("c", many, batch_size=3), model.predict("c", many), atol=1e-5)
    for bad in (0, 2.0):
        with pytest.raises(ValueError, match=rf"batch_size must be a positive integer, not {bad!r}"):
            model.sample(many, batch_size=bad)
    # a progress bar on standard error, on request; by default only on a terminal (not here)
    capsys.readouterr()
    assert model.sample(many, batch_size=3, progress=True, **settings) == one
    model.predict("c", many, batch_size=3, progress=True)
    err = capsys.readouterr().err
    assert "bart_ext generate:   0%|" in err and f"/{len(many)} [" in err and "bart_ext predict: " in err, err
    model.sample(many, batch_size=3, **settings)
    assert "bart_ext" not in capsys.readouterr().err


def test_hub_names_a_text_longer_than_the_model_and_cuts_it_where_fairseq_tools_do(tmp_path, data_dir):
    """A text longer than the model's 64 positions: fill_mask and generate stop with one ValueError naming it
    (the embedding lookup raised "IndexError: index out of range in self"); summarize cuts it as fine-tuning
    cut sources, and predict as scripts/classify.py cuts it: the first tokens and the final </s>."""
    import bart_ext

    model = bart_ext.load(write_ours(tmp_path / "ours.pt", data_dir / "bin", seed=1))
    long = " ".join(["We propose a parser for trees."] * 20)
    masked = long + " We propose a <mask> for parsing."
    assert len(model.encode(masked)) > 64
    with pytest.raises(ValueError, match=rf"fill_mask: text 1 is {len(model.encode(masked))} tokens with <s> and "
                                         r"</s>, more than the model's 64 positions"):
        model.fill_mask(["We propose a <mask> for parsing.", masked], topk=2, max_len_b=8)
    with pytest.raises(ValueError, match=r"generate: text 0 is \d+ tokens with <s> and </s>, more than the model's 64"):
        model.generate([model.encode(long)], beam=2, max_len_b=4)
    assert isinstance(model.summarize(long, preset="xsum", max_len_b=6, min_len=2), str)
    model.model.register_classification_head("roles", num_classes=3)
    ids = model.encode(long)
    cut = torch.cat([ids[:63], ids[-1:]])
    with torch.no_grad():
        expected = model.model(cut[None], torch.tensor([64]), features_only=True,
                               classification_head_name="roles")[0][0]
    assert torch.allclose(model.predict("roles", long), expected, atol=1e-6)


def test_hub_encodes_and_classifies_pairs_as_sentence_prediction_fed_them(tmp_path, data_dir):
    """MNLI, RTE and the other pair tasks of the GLUE configs: encode(a, b) is fairseq's BART hub layout
    (<s> a </s> b </s>), predict takes (premise, hypothesis) pairs and builds them as sentence_prediction
    builds input0 + input1 (init_token, separator_token); prefix_space=False encodes as fairseq's own data
    tools did (no space before a text's first word)."""
    from types import SimpleNamespace

    import bart_ext
    from bart_ext.classify.predict import classifier_input

    ckpt = write_ours(tmp_path / "ours.pt", data_dir / "bin", seed=1)
    model = bart_ext.load(ckpt)
    d = model.dictionary
    a, b = model._tokens("We propose a parser."), model._tokens("It works.")
    assert model.encode("We propose a parser.", "It works.").tolist() == [d.bos(), *a, d.eos(), *b, d.eos()]
    model.model.register_classification_head("nli", num_classes=3)
    with torch.no_grad():
        expected = model.model(model.encode("We propose a parser.", "It works.")[None], None, features_only=True,
                               classification_head_name="nli")[0][0]
        single = model.model(model.encode("It works.")[None], None, features_only=True,
                             classification_head_name="nli")[0][0]
    pair = model.predict("nli", ("We propose a parser.", "It works."))
    assert torch.allclose(pair, expected, atol=1e-6)
    both = model.predict("nli", [("We propose a parser.", "It works."), "It works."])
    assert both.shape == (2, 3) and torch.allclose(both[0], expected, atol=1e-5) and torch.allclose(both[1], single,
                                                                                                  atol=1e-5)
    with pytest.raises(ValueError, match=r"predict: text 1, part 1 is empty"):
        model.predict("nli", ["It works.", ("It works.", " ")])
    # fairseq's hub spelling, bart.predict('mnli', bart.encode(a, b)): tokens, one row or padded rows
    # (a TypeError "predict: text 0 is not a str but Tensor" before)
    tokens = model.encode("We propose a parser.", "It works.")
    assert torch.allclose(model.predict("nli", tokens), expected, atol=1e-6)
    rows = torch.full((2, len(tokens)), d.pad())
    rows[0], rows[1, :3] = tokens, model.encode("It")
    with torch.no_grad():
        short = model.model(model.encode("It")[None], None, features_only=True, classification_head_name="nli")[0][0]
    got = model.predict("nli", rows)
    assert got.shape == (2, 3) and torch.allclose(got[0], expected, atol=1e-5) and torch.allclose(got[1], short, atol=1e-5)
    with pytest.raises(ValueError, match=r"predict: tokens must be a 1-D or 2-D LongTensor"):
        model.predict("nli", tokens.float())
    glue = SimpleNamespace(cfg=SimpleNamespace(init_token=0, separator_token=2), source_dictionary=d)
    ids = classifier_input(glue, [torch.tensor([10, 11, 2]), torch.tensor([12, 2])], limit=64)
    assert ids.tolist() == [0, 10, 11, 2, 2, 12, 2]  # fairseq's RoBERTa GLUE layout with --separator-token 2
    assert classifier_input(glue, [torch.tensor([10, 11, 2]), torch.tensor([12, 2])], limit=5).tolist() == [0, 10, 11,
                                                                                                             2, 2]
    plain = bart_ext.load(ckpt, prefix_space=False)
    assert plain._tokens("Handling terms") != model._tokens("Handling terms")
    assert model._tokens("Handling terms") == [d.index(str(t)) for t in model.bpe.encode(" Handling terms")]
    assert plain._tokens("Handling terms") == [d.index(str(t)) for t in model.bpe.encode("Handling terms")]


def test_hub_runs_a_bf16_trained_model_in_fp32_where_bf16_is_slower(tmp_path, data_dir, monkeypatch, caplog):
    """bart_ext.load(bf16=None) keeps a checkpoint's --bf16-autocast where bf16 pays and turns it off,
    with a warning, on a CPU where bf16 matmuls are slower; bf16=True/False decide; fairseq-generate's
    path (the task's build_generator) warns once where a bf16 model decodes on such a CPU."""
    import bart_ext
    from bart_ext import hardware
    from bart_ext.adapters import beam_generator

    path = write_ours(tmp_path / "ours.pt", data_dir / "bin", seed=1)
    state = torch.load(path, weights_only=True)
    state["cfg"]["model"]["bf16_autocast"] = True
    torch.save(state, path)

    monkeypatch.setattr(hardware, "bf16_slower_than_fp32", lambda: None)  # bf16 pays (AMX, or a GPU)
    assert bart_ext.load(path).model.bf16_autocast is True
    assert bart_ext.load(path, bf16=False).model.bf16_autocast is False

    monkeypatch.setattr(hardware, "bf16_slower_than_fp32", lambda: "bf16 ran at half fp32's speed")
    with caplog.at_level("WARNING"):
        model = bart_ext.load(path)
    assert model.model.bf16_autocast is False
    assert "trained with --bf16-autocast, but bf16 ran at half fp32's speed; running it in fp32" in caplog.text

    caplog.clear()
    monkeypatch.setattr(beam_generator, "_bf16_decoding_checked", False)
    model = bart_ext.load(path, bf16=True)
    assert model.model.bf16_autocast is True and not caplog.records
    with caplog.at_level("WARNING"):
        fp32 = bart_ext.load(path, bf16=False).summarize(["We propose a parser."], preset="xsum", max_len_b=6, min_len=2)
        assert not caplog.records  # an fp32 model: nothing to say
        model.summarize(["We propose a parser."], preset="xsum", max_len_b=6, min_len=2)
        model.summarize(["We propose a parser."], preset="xsum", max_len_b=6, min_len=2)
    warned = [r.getMessage() for r in caplog.records if "decodes with bf16 matmuls" in r.getMessage()]
    assert len(warned) == 1 and "bart_ext.load(..., bf16=False)" in warned[0]
    assert isinstance(fp32[0], str)


def test_dictionary_symbols_are_read_as_fairseq_reads_them(tmp_path):
    """A symbol holding U+2028 or a form feed (a sentencepiece piece can) is one dictionary line for fairseq's
    Dictionary; str.splitlines made it two and numbered every later symbol one off."""
    from fairseq.data import Dictionary

    from bart_ext.convert.vocab import read_dictionary

    path = tmp_path / "dict.txt"
    path.write_text("▁the 100\na\u2028b 50\nc\x0cd 40\n▁of 30\n", encoding="utf-8")
    assert read_dictionary(path) == Dictionary.load(str(path)).symbols
