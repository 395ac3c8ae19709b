"""The text side of LDDL data: GPT-2 BPE backends agree, and the task reads shards with GPT-2 or sentencepiece."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bart_ext.bpe import GPT2Encoder
from bart_ext.lddl_prep import process_lines


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
