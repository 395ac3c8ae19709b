"""Summarization data: aclsum pairs, held-out test papers, bad input named, BPE and binarized form."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bart_ext.summarization_data import ASPECTS, aclsum_pairs, binarize, load_preset, preset_args, read_pairs
from bart_ext.text import aclsum_split

ROOT = Path(__file__).resolve().parents[2]
WHEELS = sorted((ROOT / "data" / "downloads").glob("aclsum-*.whl"))
SUMM = ROOT / "data" / "aclsum_summ"


@pytest.fixture(scope="module")
def wheel():
    if not WHEELS:
        pytest.fail("no aclsum wheel in data/downloads: `make test` fetches it (scripts/prepare_data.py)")
    return WHEELS[-1]


def test_aclsum_pairs(wheel):
    sizes = {split: len(aclsum_pairs(wheel, split)) for split in ("train", "valid", "test")}
    assert sizes == {"train": 100, "valid": 50, "test": 100}
    rec = aclsum_split(wheel, "test")[0]
    pair = aclsum_pairs(wheel, "test")[0]
    assert pair.id == rec["id"]
    assert pair.target == " ".join(" ".join(rec["summary"][a].split()) for a in ASPECTS)
    first_abstract, last_conclusion = rec["sentences"]["abstract"][0], rec["sentences"]["conclusion"][-1]
    assert pair.source.startswith(" ".join(first_abstract.split()))
    assert pair.source.endswith(" ".join(last_conclusion.split()))


def test_test_papers_held_out_of_pretraining(wheel):
    """The share of a paper's word 8-grams found in the pretraining text: near 0 for test papers."""
    words = " ".join((ROOT / "data" / "aclsum" / "raw" / f"{s}.txt").read_text() for s in ("train", "valid")).split()
    seen = {" ".join(words[i : i + 8]) for i in range(len(words) - 7)}

    def overlap(pair):
        w = pair.source.split()
        grams = [" ".join(w[i : i + 8]) for i in range(len(w) - 7)]
        return sum(g in seen for g in grams) / len(grams)

    test = [overlap(p) for p in aclsum_pairs(wheel, "test")]
    train = [overlap(p) for p in aclsum_pairs(wheel, "train")[:30]]
    assert max(test) < 0.05, max(test)
    assert sorted(train)[len(train) // 2] > 0.15, train  # the measure does find papers that are there


def test_read_pairs_names_bad_input(tmp_path):
    (tmp_path / "train.source").write_text("a document\nanother one\n")
    (tmp_path / "train.target").write_text("a summary\n")
    with pytest.raises(ValueError, match=r"train.source has 2 lines but .*train.target has 1"):
        read_pairs(tmp_path, "train")
    (tmp_path / "train.target").write_text("a summary\n  \n")
    with pytest.raises(ValueError, match=r"train.target:2: empty line"):
        read_pairs(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="valid.source"):
        read_pairs(tmp_path, "valid")


def test_a_line_is_what_fairseq_preprocess_and_wc_count(tmp_path):
    """News text carries U+2028, U+2029, U+0085 and form feeds inside documents. str.splitlines ends a line
    at each: one of them in a source and another in a later target shifted every pair between them
    (silently: both files still had as many "lines"), and one alone made aligned files disagree. A line is
    what fairseq-preprocess reads (Python's universal newlines), and the script says what is wrong in
    one line."""
    from bart_ext.files import InputError, read_lines

    sources = ["Doc one says\u2028hello .", "Doc two\x0cgoes on .", "Doc three ."]
    targets = ["Sum one .", "Sum two .", "Sum\u2029three ."]
    (tmp_path / "train.source").write_text("".join(t + "\n" for t in sources), encoding="utf-8")
    (tmp_path / "train.target").write_bytes("".join(t + "\r\n" for t in targets).encode("utf-8"))
    for path in (tmp_path / "train.source", tmp_path / "train.target"):
        with open(path, encoding="utf-8") as f:  # how fairseq's binarizer and a Python loop read lines
            assert read_lines(path) == [line.rstrip("\n") for line in f]
    assert len((tmp_path / "train.source").read_text(encoding="utf-8").splitlines()) == 5  # the old count
    pairs = read_pairs(tmp_path, "train")
    assert [(p.source, p.target) for p in pairs] == [
        ("Doc one says hello .", "Sum one ."), ("Doc two goes on .", "Sum two ."), ("Doc three .", "Sum three .")]
    (tmp_path / "valid.source").write_text("a\nb\n")
    (tmp_path / "valid.target").write_text("a\n")
    with pytest.raises(InputError):
        read_pairs(tmp_path, "valid")
    proc = __import__("subprocess").run(
        [sys.executable, str(ROOT / "scripts" / "prepare_summarization.py"), "--raw", str(tmp_path), "--out",
         str(tmp_path / "out"), "--gpt2", str(ROOT / "data" / "aclsum" / "gpt2")], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip() == (f"prepare_summarization.py: {tmp_path / 'valid.source'} has 2 lines but "
                                   f"{tmp_path / 'valid.target'} has 1: they must be aligned")


def test_binarized_data_and_wrong_dictionary(tmp_path):
    bin_dir = SUMM / "bin"
    if not (bin_dir / "dict.source.txt").exists():
        pytest.fail(f"{bin_dir} missing: `make test` prepares it")
    assert (bin_dir / "dict.source.txt").read_bytes() == (ROOT / "data" / "aclsum" / "bin" / "dict.txt").read_bytes()
    # A dictionary of some other tokenization: nearly everything is <unk>, and the file is named.
    wrong = tmp_path / "dict.txt"
    wrong.write_text("".join(f"tok{i} 1\n" for i in range(100)))
    (tmp_path / "bpe").mkdir()
    for side in ("source", "target"):
        (tmp_path / "bpe" / f"valid.{side}").write_text((SUMM / "bpe" / f"valid.{side}").read_text())
    with pytest.raises(ValueError, match=r"does not fit this BPE: .*valid\.source \(source\) 9\d\.\d% of tokens are <unk>"):
        binarize(tmp_path / "bpe", wrong, tmp_path / "bin")
    assert not (tmp_path / "bin").exists()


def test_bart_summarization_task_shapes_data():
    from fairseq.tasks import TASK_REGISTRY

    import user_dir  # noqa: F401  (registers the task)
    from omegaconf import OmegaConf

    cls = TASK_REGISTRY["bart_summarization"]
    dc = cls.__dataclass
    cfg = OmegaConf.structured(dc(data=str(SUMM / "bin"), truncate_source=True, max_source_positions=64,
                                  train_subset="train", dataset_impl=None, required_seq_len_multiple=1))
    task = cls.setup_task(cfg)
    assert task.src_dict[len(task.src_dict) - 1] == "<mask>"  # the pretrained embedding's size
    ds = task.load_dataset("valid")
    bos, eos = task.src_dict.bos(), task.src_dict.eos()
    for i in range(5):
        item = ds[i]
        assert item["source"][0] == bos and item["source"][-1] == eos and len(item["source"]) <= 64
        assert item["target"][0] == bos and item["target"][-1] == eos
    cfg.prepend_bos = cfg.target_bos = False
    plain = cls.setup_task(cfg).load_dataset("valid")
    assert plain[0]["target"].tolist() == ds[0]["target"].tolist()[1:]
    assert plain[0]["source"][0] != bos


def test_presets():
    assert load_preset("xsum") == {"beam": 6, "lenpen": 1.0, "max_len_b": 60, "min_len": 10, "no_repeat_ngram_size": 3}
    assert load_preset("cnn_dm") == {"beam": 4, "lenpen": 2.0, "max_len_b": 140, "min_len": 55,
                                     "no_repeat_ngram_size": 3}
    assert preset_args("xsum")[:2] == ["--beam", "6"]
    with pytest.raises(ValueError, match="unknown generation preset 'cnn'.*known: cnn_dm, xsum"):
        load_preset("cnn")


def _summ_task(**overrides):
    from fairseq.tasks import TASK_REGISTRY

    import user_dir  # noqa: F401
    from omegaconf import OmegaConf

    cls = TASK_REGISTRY["bart_summarization"]
    cfg = OmegaConf.structured(cls.__dataclass(data=str(SUMM / "bin"), truncate_source=True, max_source_positions=64,
                                               train_subset="train", dataset_impl=None, required_seq_len_multiple=1,
                                               **overrides))
    return cls.setup_task(cfg)


def _sentences_batched(task, split: str, *args, **kwargs) -> list[int]:
    itr = task.get_batch_iterator(task.dataset(split), *args, **kwargs)
    return [len(batch["id"]) for batch in itr.next_epoch_itr(shuffle=False)]


def test_every_sentence_outside_the_training_split_is_batched():
    """fairseq drops a last batch that is not a multiple of --required-batch-size-multiple (fairseq
    #5036): fairseq-generate and validation lose sentences. The task keeps every one outside the
    training split, whose batches stay stock fairseq's."""
    from fairseq.tasks.translation import TranslationTask

    ours, stock = _summ_task(), _summ_task()
    batching = dict(max_sentences=16, max_positions=(1024, 1024), ignore_invalid_inputs=True,
                    required_batch_size_multiple=8)
    for task in (ours, stock):
        task.load_dataset("train")
        task.load_dataset("valid")
    n_valid, n_train = len(ours.dataset("valid")), len(ours.dataset("train"))
    assert n_valid % 16 % 8 and n_train % 16 % 8  # both splits end in a short batch
    stock_valid = sum(len(b["id"]) for b in TranslationTask.get_batch_iterator(
        stock, dataset=stock.dataset("valid"), **batching).next_epoch_itr(shuffle=False))
    assert stock_valid < n_valid  # what fairseq does
    assert sum(_sentences_batched(ours, "valid", **batching)) == n_valid
    # positionally, as (max_tokens, max_sentences, max_positions, ignore_invalid_inputs, multiple)
    fresh = _summ_task()
    fresh.load_dataset("valid")
    assert sum(_sentences_batched(fresh, "valid", None, 16, (1024, 1024), True, 8)) == n_valid
    stock_train = [len(b["id"]) for b in TranslationTask.get_batch_iterator(
        stock, dataset=stock.dataset("train"), **batching).next_epoch_itr(shuffle=False)]
    assert _sentences_batched(ours, "train", **batching) == stock_train and sum(stock_train) < n_train


def test_inference_datasets_begin_with_bos_once():
    task = _summ_task()
    bos = task.src_dict.bos()
    raw = [torch.tensor([10, 11, 2]), torch.tensor([bos, 12, 2])]  # without and with <s> already
    ds = task.build_dataset_for_inference(raw, [3, 3])
    assert ds[0]["source"].tolist() == [bos, 10, 11, 2] and ds[1]["source"].tolist() == [bos, 12, 2]
    plain = _summ_task(prepend_bos=False).build_dataset_for_inference(raw, [3, 3])
    assert plain[0]["source"].tolist() == [10, 11, 2]


@pytest.mark.parametrize("force_bos", [True, False])
def test_force_bos_decides_the_generators_prefix(force_bos):
    task = _summ_task(force_bos=force_bos)
    seen = {}

    class Generator:
        def generate(self, models, sample, prefix_tokens=None, constraints=None, **kwargs):
            seen["prefix"] = prefix_tokens
            return []

    sample = {"net_input": {"src_tokens": torch.tensor([[0, 10, 2], [0, 11, 2]])}}
    task.inference_step(Generator(), [], sample)
    if force_bos:
        assert seen["prefix"].tolist() == [[task.tgt_dict.bos()], [task.tgt_dict.bos()]]
    else:
        assert seen["prefix"] is None
    given = torch.tensor([[7], [8]])
    task.inference_step(Generator(), [], sample, prefix_tokens=given)
    assert seen["prefix"] is given  # a caller's prefix always wins


def test_generate_script_refuses_missing_data_and_unknown_preset_before_writing(tmp_path):
    """scripts/generate.py names a data folder that is not fairseq-preprocess output, or an unknown
    preset, in one line, before fairseq-generate starts and before its results folder is made."""
    from scripts.generate import main

    ckpt = tmp_path / "run" / "checkpoint_best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"never read")
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(SystemExit, match=rf"{data}/dict.source.txt not found: DATA must be a fairseq-preprocess"):
        main([str(data), "--preset", "xsum", "--path", str(ckpt)])
    (data / "dict.source.txt").write_text("a 1\n")
    with pytest.raises(SystemExit, match=r"unknown generation preset 'nosuch' .*known: cnn_dm, xsum"):
        main([str(data), "--preset", "nosuch", "--path", str(ckpt)])
    # --score-reference writes the references as hypotheses: their ROUGE was 100 (tried at stop 53)
    with pytest.raises(SystemExit, match=r"^--rouge with --score-reference: .* ROUGE would be 100"):
        main([str(data), "--preset", "xsum", "--path", str(ckpt), "--rouge", "--", "--score-reference"])
    assert [p.name for p in ckpt.parent.iterdir()] == ["checkpoint_best.pt"]


def test_prepare_summarization_prints_the_librarys_unk_warnings_as_its_own_lines(capsys, caplog):
    import logging

    from scripts.prepare_summarization import logged_as_ours

    logger = logging.getLogger("bart_ext.summarization_data")
    before = list(logger.handlers)
    with logged_as_ours("bart_ext.summarization_data"):
        logger.warning("%s (%s): %g%% of tokens not in %s map to <unk>", "bpe/test.source", "source", 1.52, "dict.txt")
    out, err = capsys.readouterr()
    assert out == "[prepare_summarization] bpe/test.source (source): 1.52% of tokens not in dict.txt map to <unk>\n"
    assert "map to <unk>" in caplog.text  # still reaches the root logger's handlers
    assert logger.handlers == before
