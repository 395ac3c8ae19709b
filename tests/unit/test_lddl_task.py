"""The text side of LDDL data: GPT-2 BPE backends agree, and the task reads shards with GPT-2 or sentencepiece."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bart_ext.bpe import GPT2Encoder
from bart_ext.lddl_prep import process_lines
from tests import launcher


@pytest.fixture(scope="module")
def sentences(data_dir):
    lines = (data_dir / "raw" / "valid.txt").read_text(encoding="utf-8").splitlines()
    return [s for s in lines if s.strip()][:400]


def test_tiktoken_and_fairseq_gpt2_give_the_same_ids(data_dir, sentences):
    gpt2 = data_dir / "gpt2"
    texts = [" " + s for s in sentences] + ["  double  spaces\tand tabs", "don't they'll 123,456.7 ünïcödé 中文"]
    fast = GPT2Encoder(gpt2 / "encoder.json", gpt2 / "vocab.bpe", backend="tiktoken").encode_batch(texts)
    ref = GPT2Encoder(gpt2 / "encoder.json", gpt2 / "vocab.bpe", backend="fairseq").encode_batch(texts)
    assert fast == ref


def test_gpt2_files_numbered_in_a_models_order(data_dir, sentences, tmp_path):
    """encoder.json numbering tokens in a model's dictionary order (convert.py from-hf writes a transformers
    BART's vocab.json so): tiktoken's loader refused it; both backends give each text's tokens those ids."""
    import json
    import random

    from bart_ext.bpe import gpt2_ranks

    gpt2 = data_dir / "gpt2"
    tokens = json.loads((gpt2 / "encoder.json").read_text(encoding="utf-8"))
    order = list(tokens)
    random.Random(0).shuffle(order)
    renumbered = {tok: 4 + i for i, tok in enumerate(order)}  # after 4 specials, as a fairseq dictionary's
    (tmp_path / "encoder.json").write_text(json.dumps(renumbered), encoding="utf-8")
    texts = [" " + s for s in sentences[:200]] + ["don't they'll 123,456.7 ünïcödé 中文"]
    gpt2_ids = GPT2Encoder(gpt2 / "encoder.json", gpt2 / "vocab.bpe", backend="tiktoken").encode_batch(texts)
    by_id = {v: renumbered[k] for k, v in tokens.items()}
    expected = [[by_id[i] for i in row] for row in gpt2_ids]
    for backend in ("tiktoken", "fairseq"):
        got = GPT2Encoder(tmp_path / "encoder.json", gpt2 / "vocab.bpe", backend=backend).encode_batch(texts)
        assert got == expected, backend
    assert gpt2_ranks(str(gpt2 / "encoder.json"), str(gpt2 / "vocab.bpe"))[1] is None  # GPT-2's own: ids are ranks
    del renumbered["\u0120the"]  # " the", a merge's product
    (tmp_path / "encoder.json").write_text(json.dumps(renumbered), encoding="utf-8")
    with pytest.raises(ValueError, match="have no id"):
        gpt2_ranks(str(tmp_path / "encoder.json"), str(gpt2 / "vocab.bpe"))


@pytest.mark.parametrize("backend", ["tiktoken", "fairseq"])
def test_truncated_gpt2_is_gpt2_with_fewer_merges_and_lossless(data_dir, sentences, tmp_path, backend):
    from bart_ext.bpe import gpt2_decoder, write_truncated_gpt2

    gpt2 = data_dir / "gpt2"
    small = write_truncated_gpt2(gpt2, 4000, tmp_path / "gpt2_4k")
    texts = [" " + s for s in sentences[:200]] + ["don't they'll 123,456.7 ünïcödé 中文"]
    full = GPT2Encoder(gpt2 / "encoder.json", gpt2 / "vocab.bpe", backend=backend).encode_batch(texts)
    ids = GPT2Encoder(small / "encoder.json", small / "vocab.bpe", backend=backend).encode_batch(texts)
    assert all(0 <= i < 256 + 4000 for row in ids for i in row)
    # Same strings for the same ids (the tokens are GPT-2's), rare words in more pieces, nothing lost.
    decode, decode_full = gpt2_decoder(small / "encoder.json", small / "vocab.bpe"), gpt2_decoder(gpt2 / "encoder.json",
                                                                                               gpt2 / "vocab.bpe")
    assert [decode(row) for row in ids] == [decode_full(row) for row in full] == texts
    assert 1.1 < sum(map(len, ids)) / sum(map(len, full)) < 1.6
    assert sum(a == b for a, b in zip(ids, full)) > 0  # common words keep their GPT-2 ids


def test_truncated_gpt2_refuses_bad_input(data_dir, tmp_path):
    from bart_ext.bpe import write_truncated_gpt2

    with pytest.raises(ValueError, match="merges must be between 0 and 50000"):
        write_truncated_gpt2(data_dir / "gpt2", 60000, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        write_truncated_gpt2(tmp_path, 100, tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "encoder.json").write_text('{"a": 0, "b": 1, "ab": 7}', encoding="utf-8")
    (tmp_path / "c" / "vocab.bpe").write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: merge 'a b' is not id 256"):
        write_truncated_gpt2(tmp_path / "c", 1, tmp_path / "d")
    assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


def task_on(folder, **kw):
    import user_dir  # noqa: F401  (registers bart_denoising)
    from user_dir.bart_denoising import BartDenoisingTask

    return BartDenoisingTask.from_data(folder, tokens_per_sample=64, seed=5, **kw)


def write_rows(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"sentences": pa.array(rows, pa.string())}), folder / "shard-0.parquet")


def test_shard_folder_without_dictionary_gets_every_gpt2_id(data_dir, sentences, tmp_path):
    gpt2 = data_dir / "gpt2"
    encoder = GPT2Encoder(gpt2 / "encoder.json", gpt2 / "vocab.bpe")
    rows, _ = process_lines([" ".join(sentences[i : i + 5]) for i in range(0, 100, 5)], encoder, 64)
    write_rows(tmp_path / "train", rows)
    task = task_on(tmp_path, gpt2_encoder_json=str(gpt2 / "encoder.json"))
    assert len(task.dictionary) == 4 + 50257 + 1  # specials, every BPE id, <mask>
    dataset = task.load_dataset("train")
    itr = task.get_batch_iterator(dataset, max_sentences=4).next_epoch_itr()
    batch = next(iter(itr))
    assert batch["target"][:, 0].eq(task.dictionary.bos()).all()
    assert not batch["target"].eq(task.dictionary.unk()).any()
    with pytest.raises(FileNotFoundError, match="--disable-validation"):
        task.load_dataset("valid")


def test_sentencepiece_shards(data_dir, sentences, tmp_path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=400, bos_id=-1, eos_id=-1, minloglevel=2)
    from bart_ext.bpe import SentencePieceEncoder

    encoder = SentencePieceEncoder(tmp_path / "sp.model")
    sp = encoder._processor()
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
    (tmp_path / "dict.txt").write_text("".join(f"{p} 1\n" for p in pieces), encoding="utf-8")
    rows, _ = process_lines([" ".join(sentences[i : i + 4]) for i in range(0, 80, 4)], encoder, 64)
    write_rows(tmp_path / "train", rows)
    task = task_on(tmp_path, word_starts="sentencepiece", lddl_sentencepiece_model=str(tmp_path / "sp.model"))
    batch = next(iter(task.get_batch_iterator(task.load_dataset("train"), max_sentences=4).next_epoch_itr()))
    target = batch["target"][0]
    words = [task.dictionary[int(t)] for t in target[1:] if int(t) != task.dictionary.pad()][:-1]
    assert [w for w in words if w not in pieces and w != "<unk>"] == []
    assert "".join(words).replace("\u2581", " ").strip()  # real text, not <unk>s
    assert sum(w == "<unk>" for w in words) < 0.05 * len(words)
    # lddl_preprocess.py --sentencepiece-model's layout (the model as DATA/sentencepiece.model): BART's default
    # GPT-2 word starts stopped on a missing encoder.json; they now say what to pass, and show_noise.py reads it
    import shutil
    import sys

    from tests.conftest import ROOT

    shutil.copy(tmp_path / "sp.model", tmp_path / "sentencepiece.model")
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path} is sentencepiece-encoded \(sentencepiece.model, no GPT-2 "
                                                r"encoder.json\): pass --word-starts sentencepiece"):
        task_on(tmp_path)
    write_rows(tmp_path / "valid", rows[:3])
    proc = launcher.run([sys.executable, str(ROOT / "scripts" / "show_noise.py"), "--data", str(tmp_path), "--n", "2",
                         "--tokens-per-sample", "64"], timeout=300)
    assert proc.returncode == 0 and proc.stdout.count(" clean: ") == 2, proc.stderr[-2000:]
    clean = [line for line in proc.stdout.splitlines() if line.startswith("  clean: ")][0][len("  clean: "):]
    assert clean.split()[:3] == sentences[0].split()[:3]  # decoded through the sentencepiece model


def test_show_noise_reads_lddl_shards_as_training_noises_them(data_dir, sentences, tmp_path):
    """scripts/show_noise.py stopped on LDDL shards (the demo's data: "'LDDLDataset' object has no attribute
    'samples'"). Epoch.noised_samples, which it prints, gives the validation stream's first samples noised
    exactly as the training iterator feeds them."""
    import dataclasses
    import shutil
    import sys

    import torch

    from bart_ext.lddl_data import Epoch
    from tests.conftest import ROOT

    gpt2 = data_dir / "gpt2"
    encoder = GPT2Encoder(gpt2 / "encoder.json", gpt2 / "vocab.bpe")
    rows, _ = process_lines([" ".join(sentences[i : i + 5]) for i in range(0, 100, 5)], encoder, 64)
    write_rows(tmp_path / "train", rows)
    write_rows(tmp_path / "valid", rows[:6])
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(gpt2 / name, tmp_path / name)
    task = task_on(tmp_path)
    dataset = task.load_dataset("valid")
    shown = dict(Epoch(dataclasses.replace(dataset.cfg, batch_size=1), 1, shuffle=False).noised_samples(4))
    assert len(shown) == 4
    pad, fed = task.dictionary.pad(), {}
    for batch in task.get_batch_iterator(dataset, max_sentences=2).next_epoch_itr(shuffle=False):
        for i, src, tgt in zip(batch["id"].tolist(), batch["net_input"]["src_tokens"], batch["target"]):
            fed[i] = (src[src.ne(pad)], tgt[tgt.ne(pad)])
    assert len(fed) == 6
    for i, noised in shown.items():
        assert torch.equal(fed[i][0], torch.from_numpy(noised.source)) and torch.equal(fed[i][1], torch.from_numpy(noised.target))
    proc = launcher.run([sys.executable, str(ROOT / "scripts" / "show_noise.py"), "--data", str(tmp_path), "--n", "9",
                         "--tokens-per-sample", "64"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("--- sample") == 6 and "(the valid split has 6 samples)" in proc.stdout
    assert proc.stdout.count("<mask>") >= 6 and proc.stdout.count(" clean: ") == 6


def test_folder_codec_reads_gpt2_or_sentencepiece(data_dir, sentences, tmp_path):
    """What the Python API, generate.py, classify.py and show_noise.py encode and decode with: GPT-2 ids as
    fairseq writes them, or sentencepiece pieces; text that continues a word (after a <mask>) gets no
    word-start mark; other symbols stay visible; a folder with neither is named."""
    import shutil

    from bart_ext.bpe import FolderCodec
    from tests.helpers import sentencepiece_model

    gpt2 = FolderCodec(data_dir / "gpt2")
    encoder = GPT2Encoder(data_dir / "gpt2" / "encoder.json", data_dir / "gpt2" / "vocab.bpe")
    text = " " + sentences[0]
    assert gpt2.kind == "gpt2" and gpt2.symbols(text) == [str(i) for i in encoder.encode_batch([text])[0]]
    assert gpt2.text(gpt2.symbols(text)) == sentences[0].strip()
    assert gpt2.text(gpt2.symbols(" We") + ["<mask>"] + gpt2.symbols(".")) == "We <mask>."

    (tmp_path / "corpus.txt").write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    folder = tmp_path / "sp"
    folder.mkdir()
    sp = sentencepiece_model(tmp_path / "corpus.txt", folder, 400)
    shutil.copy(folder / "sp.model", folder / "sentencepiece.model")
    codec = FolderCodec(folder)
    assert codec.kind == "sentencepiece" and codec.bpe is None
    assert codec.symbols(text) == sp.encode(text, out_type=str)
    assert codec.text(codec.symbols(text)) == sp.decode(sp.encode(text))
    # "a method." in running text is ... "▁method" "."; after a <mask>, "." must be the same "." piece
    assert "." in sp.encode(" a method.", out_type=str) and codec.symbols(".") == ["."]
    assert codec.symbols(" .")[0].startswith("\u2581")
    assert codec.text(codec.symbols(" We") + ["<mask>"] + codec.symbols(".")) == "We <mask>."
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match=r"encoder.json and .*vocab.bpe \(GPT-2 BPE\), or .*sentencepiece.model, "
                                                r"not found"):
        FolderCodec(tmp_path / "none")
