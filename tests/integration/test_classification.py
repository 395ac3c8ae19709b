"""--task sentence_prediction with bart_*_preln: aclsum's sentence roles in small (the role experiment,
scripts/classify.py, the transformers export), sentence pairs and regression through the GLUE configs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests import launcher
from tests.integration.fairseq_run import USER_DIR, run

ROOT = Path(__file__).resolve().parents[2]
GLUE = ["mnli", "qnli", "qqp", "rte", "sst2", "mrpc", "cola", "stsb"]


@pytest.fixture(scope="module")
def roles(data_dir, cli_env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("roles")
    run([sys.executable, str(ROOT / "scripts" / "prepare_roles.py"), "--out", str(out), "--max-papers", "3",
         "--dict", str(data_dir / "bin" / "dict.txt")], cli_env)
    return out


@pytest.fixture(scope="module")
def pretrained(data_dir, cli_env, tmp_path_factory) -> Path:
    """A bart_tiny_preln checkpoint after a few denoising updates on the demo's corpus."""
    from tests.integration.fairseq_run import train_args

    save = tmp_path_factory.mktemp("pretrained")
    run(["fairseq-train", *train_args(data_dir, save, 4)], cli_env)
    return save / "checkpoint_last.pt"


def test_role_experiment_in_small(roles, pretrained, cli_env, tmp_path):
    """The README's experiment end to end at CI size: both fine-tunings, the table, results.json."""
    out = run([sys.executable, str(ROOT / "scripts" / "roles_experiment.py"), "--small", "--pretrained", str(pretrained),
               "--data", str(roles), "--run-dir", str(tmp_path / "run")], cli_env, timeout=900)
    assert f"Loaded checkpoint {pretrained}" in (tmp_path / "run" / "pretrained" / "train.log").read_text()
    assert "Loaded checkpoint" not in (tmp_path / "run" / "random" / "train.log").read_text()
    for row in ("majority class", "random initialisation", "pretrained (demo)"):
        assert f"| {row}" in out
    results = __import__("json").loads((tmp_path / "run" / "results.json").read_text())
    assert results["labels"] == ["none", "approach", "challenge", "outcome"] or set(results["labels"]) <= {
        "none", "approach", "challenge", "outcome"}
    for metric in ("accuracy", "macro-F1"):
        for system, (value, lo, hi) in results["scores"][metric].items():
            assert 0.0 <= lo <= value <= hi <= 1.0, (metric, system)


def test_role_data_follows_the_pretrained_vocabulary(roles, data_dir, cli_env, tmp_path):
    """Another BPE and dictionary (GPT-2 cut to 500 merges) redo the encoding and binarization of the
    same prepared sentences; the same ones again are skipped."""
    import shutil

    from fairseq.data import Dictionary, data_utils

    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    from bart_ext.bpe import gpt2_dictionary_lines, write_truncated_gpt2

    out = tmp_path / "roles"
    shutil.copytree(roles, out)
    small = write_truncated_gpt2(data_dir / "gpt2", 500, tmp_path / "gpt2_500")
    (small / "dict.txt").write_text("\n".join(gpt2_dictionary_lines(small / "encoder.json")) + "\n")
    prepare = [sys.executable, str(ROOT / "scripts" / "prepare_roles.py"), "--out", str(out), "--max-papers", "3"]
    log = run([*prepare, "--dict", str(small / "dict.txt"), "--gpt2", str(small)], cli_env)
    assert "binarizing the sentences in" in log
    d = Dictionary.load(str(out / "bin" / "input0" / "dict.txt"))
    assert len(d) == len(Dictionary.load(str(small / "dict.txt"))) < 1000
    first = (out / "raw" / "train.input0").read_text(encoding="utf-8").splitlines()[0]
    ids = data_utils.load_indexed_dataset(str(out / "bin" / "input0" / "train"), d)[0].tolist()
    encoder = get_encoder(str(small / "encoder.json"), str(small / "vocab.bpe"))
    assert ids[:-1] == [d.index(str(t)) for t in encoder.encode(" " + first.strip())] and d.unk() not in ids
    assert (out / "bin" / "vocab.bpe").read_bytes() == (small / "vocab.bpe").read_bytes()
    assert "binarizing" not in run([*prepare, "--dict", str(small / "dict.txt"), "--gpt2", str(small)], cli_env)


@pytest.fixture(scope="module")
def classifier(roles, cli_env, tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("classifier")
    run(["fairseq-hydra-train", "--config-dir", str(ROOT / "configs" / "finetune"), "--config-name", "roles",
         f"common.user_dir={USER_DIR}", f"task.data={roles / 'bin'}", f"checkpoint.save_dir={save}",
         "checkpoint.finetune_from_model=null", "optimization.max_update=3", "dataset.validate_interval_updates=3",
         f"hydra.run.dir={save / 'hydra'}"], cli_env)
    return save / "checkpoint_best.pt"


def test_classify_script_labels_raw_sentences(classifier, roles, cli_env, tmp_path, capsys):
    text = tmp_path / "in.txt"
    text.write_text("We propose a new parser.\n\nOur results improve the state of the art by 2 points.\n"
                    "We propose a new parser.\tIt improves the state of the art.\n")  # a pair (MNLI's layout)
    out = run([sys.executable, str(ROOT / "scripts" / "classify.py"), "--path", str(classifier), "--data",
               str(roles / "bin"), str(text)], cli_env)
    rows = [line.split("\t", 1) for line in out.splitlines() if "\t" in line]
    assert [r[1] for r in rows] == ["We propose a new parser.", "Our results improve the state of the art by 2 points.",
                                    "We propose a new parser.\tIt improves the state of the art."]
    assert {r[0] for r in rows} <= {"none", "approach", "challenge", "outcome"}
    import bart_ext  # the Python API gives the same labels

    model = bart_ext.load(classifier, data=roles / "bin")
    inputs = [rows[0][1], rows[1][1], tuple(rows[2][1].split("\t"))]
    logits = model.predict("sentence_classification_head", inputs)
    names = [model.task.label_dictionary[i + 4] for i in range(4)]
    assert logits.shape == (3, 4) and [names[i] for i in logits.argmax(-1).tolist()] == [r[0] for r in rows]
    from bart_ext.classify.predict import load_classifier

    fs_model, fs_task, head = load_classifier(classifier, roles / "bin")
    with torch.no_grad():  # the pair as sentence_prediction's input0 + input1 (init_token 0, no separator)
        a, b = (model.dictionary.encode_line(" ".join(map(str, model.bpe.encode(" " + t))), add_if_not_exist=False).long()
                for t in inputs[2])
        direct = fs_model(torch.cat([a.new_tensor([0]), a, b])[None], None, features_only=True,
                          classification_head_name=head)[0][0]
    assert torch.allclose(logits[2], direct, atol=1e-5)
    from bart_ext.classify.predict import predict_sentences  # what classify.py runs, with its progress bar

    capsys.readouterr()
    labels = predict_sentences(fs_model, fs_task, head, [rows[0][1], rows[1][1]],
                               lambda s: " ".join(model.codec.symbols(" " + s)), batch_size=1, progress=True)
    assert labels == [rows[0][0], rows[1][0]] and "bart_ext classify:" in capsys.readouterr().err
    proc = launcher.run(
        [sys.executable, str(ROOT / "scripts" / "classify.py"), "--path", str(classifier), "--data", str(roles / "bin"),
         "--head", "mnli", str(text)], cli_env, ROOT)
    assert proc.returncode != 0
    assert f"{classifier} has no classification head 'mnli' (it has: sentence_classification_head)" in proc.stderr
    # a checkpoint whose data folder is gone: the message says it was the checkpoint's and how to give one
    state = torch.load(classifier, map_location="cpu", weights_only=False)
    state["cfg"]["task"]["data"] = str(tmp_path / "gone")
    torch.save(state, tmp_path / "moved.pt")
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path}/gone/input0/dict.txt not found: the checkpoint's "
                                                r"task.data \(no --data given\) must be the folder"):
        load_classifier(tmp_path / "moved.pt")
    assert load_classifier(tmp_path / "moved.pt", roles / "bin")[2] == head


def test_exported_classifier_gives_the_same_logits_in_transformers(classifier, roles, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from bart_ext.classify.predict import load_classifier
    from scripts.convert import main as convert

    convert(["to-hf", str(classifier), str(tmp_path / "hf")])
    theirs = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
    assert type(theirs).__name__ == "MBartForSequenceClassification"
    model, task, head = load_classifier(classifier, roles / "bin")
    assert [theirs.config.id2label[i] for i in range(4)] == [task.label_dictionary[i + 4] for i in range(4)]
    task.load_dataset("test")
    dataset = task.dataset("test")
    sample = dataset.collater([dataset[i] for i in range(min(12, len(dataset)))])
    src = sample["net_input"]["src_tokens"]
    assert bool(src.eq(1).any()), "the batch should hold padded rows"
    with torch.no_grad():
        ours = model(**sample["net_input"], features_only=True, classification_head_name=head)[0]
        got = theirs(input_ids=src, attention_mask=src.ne(1)).logits
    torch.testing.assert_close(got, ours, atol=1e-5, rtol=1e-5)
    return tmp_path / "hf"


def test_a_transformers_classifier_comes_back_and_fine_tunes(classifier, roles, cli_env, tmp_path):
    """from-hf of a *ForSequenceClassification folder (here the export above: a corpus dictionary, so the
    folder has rows for GPT-2 tokens outside it and no final_logits_bias to mark them) gives a
    sentence_prediction checkpoint with the same weights, head and labels, that fine-tunes with the roles
    config from checkpoint.finetune_from_model, its head kept (before: "weights bart_ext has no place for:
    classification_head.dense.bias, ...")."""
    from scripts.convert import main as convert

    hf_dir = test_exported_classifier_gives_the_same_logits_in_transformers(classifier, roles, tmp_path)
    convert(["from-hf", str(hf_dir), str(tmp_path / "back")])
    before = torch.load(classifier, weights_only=False)["model"]
    after = torch.load(tmp_path / "back" / "checkpoint.pt", weights_only=False)
    assert set(after["model"]) == set(before) and all(torch.equal(before[k], after["model"][k]) for k in before)
    assert after["cfg"]["task"]["_name"] == "sentence_prediction" and after["cfg"]["task"]["num_classes"] == 4
    assert after["cfg"]["task"]["init_token"] == 0 and after["cfg"]["task"]["separator_token"] is None  # as trained
    labels = (roles / "bin" / "label" / "dict.txt").read_text().splitlines()
    assert (tmp_path / "back" / "label" / "dict.txt").read_text().splitlines() == [f"{x.split()[0]} 1" for x in labels[:4]]
    save = tmp_path / "ft"
    log = run(["fairseq-hydra-train", "--config-dir", str(ROOT / "configs" / "finetune"), "--config-name", "roles",
               f"common.user_dir={USER_DIR}", f"task.data={roles / 'bin'}", f"checkpoint.save_dir={save}",
               f"checkpoint.finetune_from_model={tmp_path / 'back' / 'checkpoint.pt'}", "optimization.max_update=2",
               "dataset.validate_interval_updates=2", f"hydra.run.dir={save / 'hydra'}"], cli_env)
    assert f"loading pretrained model from {tmp_path / 'back' / 'checkpoint.pt'}" in log
    assert "of the checkpoint dropped" not in log  # logged where the head does not fit the task's (started afresh)
    assert (save / "checkpoint_best.pt").is_file()


def pair_data(roles: Path, root: Path, cli_env, regression: bool) -> Path:
    """Sentence pairs from the role data, as a user's own: (sentence, next sentence), labels 'same'/'different'
    role or a score in [0, 5], through ``prepare_roles.py --raw`` (``.input1`` files make pairs; ``--regression``
    keeps the scores as text)."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        sentences = (roles / "raw" / f"{split}.input0").read_text(encoding="utf-8").splitlines()
        labels = (roles / "raw" / f"{split}.label").read_text().splitlines()
        n = min(len(sentences) - 1, 40)
        (raw / f"{split}.input0").write_text("\n".join(sentences[:n]) + "\n", encoding="utf-8")
        (raw / f"{split}.input1").write_text("\n".join(sentences[1 : n + 1]) + "\n", encoding="utf-8")
        same = [labels[i] == labels[i + 1] for i in range(n)]
        text = [f"{5.0 * s:.1f}" for s in same] if regression else ["same" if s else "different" for s in same]
        (raw / f"{split}.label").write_text("\n".join(text) + "\n")
    printed = run([sys.executable, str(ROOT / "scripts" / "prepare_roles.py"), "--raw", str(raw), "--out", str(root),
                   "--dict", str(roles / "bin" / "input0" / "dict.txt"), "--gpt2", str(roles / "bin"),
                   *(["--regression"] if regression else [])], cli_env)
    out = root / "bin"
    assert (("1 regression target per example; fine-tune with task.num_classes=1 task.regression_target=true"
             if regression else "2 labels") in printed), printed
    for split in ("train", "valid", "test"):  # each side binarized line by line
        for side in ("input0", "input1"):
            assert (out / side / f"{split}.idx").is_file()
        if regression:  # fairseq reads regression targets as text
            assert (out / "label" / f"{split}.label").read_text() == (raw / f"{split}.label").read_text()
    assert not regression or not (out / "label" / "dict.txt").exists()
    return out


def test_finetuning_continues_after_a_restart_and_refuses_a_missing_start(classifier, roles, cli_env, tmp_path):
    """The fine-tuning configs start from checkpoint.finetune_from_model: the same command run
    again continues from the save_dir's checkpoint_last.pt instead of starting over from the
    pretrained model, and a start that does not exist is an error, not random initialisation."""
    import re

    def finetune(start: Path, save: Path, updates: int) -> str:
        return run(["fairseq-hydra-train", "--config-dir", str(ROOT / "configs" / "finetune"), "--config-name", "roles",
                    f"common.user_dir={USER_DIR}", f"task.data={roles / 'bin'}", f"checkpoint.save_dir={save}",
                    f"checkpoint.finetune_from_model={start}", "checkpoint.no_last_checkpoints=false",
                    f"optimization.max_update={updates}", "lr_scheduler.total_num_update=4",
                    "dataset.validate_interval_updates=2", "common.log_interval=1", f"hydra.run.dir={save / 'hydra'}"],
                   cli_env)

    save = tmp_path / "ft"
    first = finetune(classifier, save, 2)
    assert f"loading pretrained model from {classifier}" in first
    again = finetune(classifier, save, 4)  # the same command after an interruption, to a later update
    assert "loading pretrained model" not in again
    assert re.search(r"Loaded checkpoint " + re.escape(str(save / "checkpoint_last.pt")) + r" \(epoch \d+ @ 2 updates\)", again)
    assert torch.load(save / "checkpoint_last.pt", weights_only=False)["optimizer_history"][-1]["num_updates"] == 4
    missing = tmp_path / "no_such_checkpoint.pt"
    with pytest.raises(AssertionError, match=re.escape(f"--finetune-from-model {missing} does not exist")):
        finetune(missing, tmp_path / "ft2", 2)
    assert not list((tmp_path / "ft2").glob("*.pt"))


@pytest.mark.parametrize("config", ["rte", "stsb"])
def test_glue_configs_train_pairs_and_regression(roles, cli_env, tmp_path, config):
    """fairseq's BART GLUE recipe (configs/finetune/glue_*.yaml) on sentence pairs: classification
    (rte) and regression (stsb), a few updates of bart_tiny_preln from scratch."""
    data = pair_data(roles, tmp_path / "data", cli_env, regression=config == "stsb")
    out = run(["fairseq-hydra-train", "--config-dir", str(ROOT / "configs" / "finetune"), "--config-name",
               f"glue_{config}", f"common.user_dir={USER_DIR}", f"task.data={data}", "model._name=bart_tiny_preln",
               "task.max_positions=512", "common.cpu=true", "model.bf16_autocast=false", "dataset.batch_size=8",
               "optimization.max_update=3", "lr_scheduler.total_num_update=3", "lr_scheduler.warmup_updates=1",
               "common.log_format=json", "common.log_interval=1",
               f"checkpoint.save_dir={tmp_path / 'ckpt'}", "checkpoint.finetune_from_model=null",
               f"hydra.run.dir={tmp_path / 'hydra'}"], cli_env)
    assert "num_updates\": \"3\"" in out or "num_updates 3" in out
    state = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    head = state["model"]["classification_heads.sentence_classification_head.out_proj.weight"]
    assert head.shape[0] == (1 if config == "stsb" else 2)
    assert state["cfg"]["task"]["regression_target"] is (config == "stsb")
    if config == "rte":
        exported_pairs_read_as_trained(tmp_path / "ckpt" / "checkpoint_last.pt", data, roles, tmp_path / "hf")
        return
    # classify.py scores pairs with a regression model (it stopped on the missing label/dict.txt), its
    # data folder taken from the checkpoint when --data is left out
    import bart_ext

    pairs = [("We propose a new parser.", "It improves the state of the art."), ("Our results hold.", "We fail.")]
    (tmp_path / "pairs.txt").write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
    printed = run([sys.executable, str(ROOT / "scripts" / "classify.py"), "--path", str(tmp_path / "ckpt" / "checkpoint_last.pt"),
                   str(tmp_path / "pairs.txt")], cli_env)
    scores = [float(line.split("\t")[0]) for line in printed.splitlines() if line.count("\t") == 2]
    want = bart_ext.load(tmp_path / "ckpt" / "checkpoint_last.pt").predict("sentence_classification_head", pairs)
    assert want.shape == (2, 1) and scores == pytest.approx(want[:, 0].tolist(), abs=1e-4)
    assert "warning" not in printed
    # a line without its tab, for a model fine-tuned on pairs (its data has input1/), is read as one text, with a warning
    (tmp_path / "mixed.txt").write_text("We propose a new parser.\nOur results hold.\tWe fail.\n")
    printed = run([sys.executable, str(ROOT / "scripts" / "classify.py"), "--path", str(tmp_path / "ckpt" / "checkpoint_last.pt"),
                   str(tmp_path / "mixed.txt")], cli_env)
    assert f"warning: 1 of 2 lines have no tab (the first: line 1), but the model was fine-tuned on sentence pairs ({data / 'input1'}/)" in printed


def exported_pairs_read_as_trained(ckpt: Path, data: Path, roles: Path, out: Path) -> None:
    """The transformers export of a pair classifier: its tokenizer joins (sentence, next sentence) as
    sentence_prediction fed them (<s> A </s> B </s>: the BART GLUE recipe has no separator token), where
    transformers' BART tokenizer wrote <s> A </s></s> B </s>; the logits equal ours."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import bart_ext
    from bart_ext.classify.predict import load_classifier
    from scripts.convert import main as convert

    convert(["to-hf", str(ckpt), str(out), "--gpt2-encoder-json", str(roles / "bin" / "encoder.json"),
             "--gpt2-vocab-bpe", str(roles / "bin" / "vocab.bpe")])
    tok = AutoTokenizer.from_pretrained(str(out))
    theirs = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    model, task, head = load_classifier(ckpt, data)
    task.load_dataset("test")
    dataset = task.dataset("test")
    raw = (roles / "raw" / "test.input0").read_text(encoding="utf-8").splitlines()
    firsts, seconds = raw[:6], raw[1:7]
    encoded = tok(firsts, seconds, padding=True, return_tensors="pt")
    expected = [dataset[i]["net_input.src_tokens"].tolist() for i in range(6)]
    n = len(task.source_dictionary)  # GPT-2 tokens outside the dictionary: their own ids, <unk>'s embedding row
    got = [[t if t < n else 3 for t in row[mask.bool()].tolist()]
           for row, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    assert got == expected, (got[0], expected[0])
    with torch.no_grad():
        logits = theirs(**encoded).logits
        sample = dataset.collater([dataset[i] for i in range(6)])
        ours = model(**sample["net_input"], features_only=True, classification_head_name=head)[0]
    torch.testing.assert_close(logits, ours, atol=1e-5, rtol=1e-5)
    hub = bart_ext.load(ckpt, data=data)  # the Python API reads the pairs the same way
    torch.testing.assert_close(hub.predict(head, list(zip(firsts, seconds))), ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", GLUE)
def test_glue_configs_hold_fairseqs_published_settings(name):
    """Every key of each GLUE config is a field of the fairseq dataclass it configures, and the
    per-task values are those of fairseq's examples/bart/README.glue.md."""
    import dataclasses

    from fairseq.criterions.sentence_prediction import SentencePredictionConfig as CriterionConfig
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.optim.adam import FairseqAdamConfig
    from fairseq.optim.lr_scheduler.polynomial_decay_schedule import PolynomialDecayLRScheduleConfig
    from fairseq.tasks.sentence_prediction import SentencePredictionConfig as TaskConfig

    from user_dir.bart_preln import BartPrelnConfig

    cfg = yaml.safe_load((ROOT / "configs" / "finetune" / f"glue_{name}.yaml").read_text())
    groups = {f.name: f.type for f in dataclasses.fields(FairseqConfig)}
    schema = {"task": TaskConfig, "criterion": CriterionConfig, "optimizer": FairseqAdamConfig,
              "lr_scheduler": PolynomialDecayLRScheduleConfig, "model": BartPrelnConfig}
    assert cfg.pop("hydra") == {"run": {"dir": "."}}  # hydra's own settings, not fairseq's
    for group, values in cfg.items():
        fields = {f.name for f in dataclasses.fields(schema.get(group) or groups[group])} | {"_name"}
        assert set(values) <= fields, (group, set(values) - fields)
    published = {"mnli": (3, 5e-6, 128, 30968, 1858), "qnli": (2, 1e-5, 32, 33112, 1986),
                 "qqp": (2, 1e-5, 32, 113272, 6796), "rte": (2, 1e-5, 32, 1018, 61),
                 "sst2": (2, 5e-6, 128, 5233, 314), "mrpc": (2, 2e-5, 64, 1148, 68),
                 "cola": (2, 2e-5, 64, 1334, 80), "stsb": (1, 2e-5, 32, 1799, 107)}[name]
    got = (cfg["task"]["num_classes"], float(cfg["optimization"]["lr"][0]), cfg["dataset"]["batch_size"],
           cfg["lr_scheduler"]["total_num_update"], cfg["lr_scheduler"]["warmup_updates"])
    assert got == published
    assert cfg["task"]["add_prev_output_tokens"] is True and cfg["task"]["init_token"] == 0
    assert cfg["optimization"]["max_epoch"] == 10 and cfg["optimizer"]["adam_betas"] == "(0.9, 0.98)"
    assert cfg["checkpoint"]["best_checkpoint_metric"] == ("loss" if name == "stsb" else "accuracy")


def test_a_sentencepiece_model_classifies_raw_sentences(roles, cli_env, tmp_path):
    """prepare_roles.py --sentencepiece-model (a model pretrained on sentencepiece shards): pieces go to
    fairseq-preprocess and the model beside the data, from which classify.py and the Python API encode raw
    sentences (classify.py read only GPT-2 files); their labels agree."""
    import bart_ext

    from tests.helpers import sentencepiece_model

    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        for ext in ("input0", "label"):
            lines = (roles / "raw" / f"{split}.{ext}").read_text(encoding="utf-8").splitlines()[:60]
            (raw / f"{split}.{ext}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    sp = sentencepiece_model(raw / "train.input0", tmp_path, 300)
    run([sys.executable, str(ROOT / "scripts" / "prepare_roles.py"), "--raw", str(raw), "--out", str(tmp_path / "data"),
         "--dict", str(tmp_path / "dict.txt"), "--sentencepiece-model", str(tmp_path / "sp.model")], cli_env)
    data = tmp_path / "data" / "bin"
    assert (data / "sentencepiece.model").read_bytes() == (tmp_path / "sp.model").read_bytes()
    assert not (data / "encoder.json").exists()
    binarized = (tmp_path / "data" / "bpe" / "train.input0").read_text(encoding="utf-8").splitlines()[0].split()
    assert binarized == sp.encode(" " + (raw / "train.input0").read_text(encoding="utf-8").splitlines()[0], out_type=str)
    labels = sorted(set((raw / "train.label").read_text().split()))
    run(["fairseq-train", str(data), "--user-dir", USER_DIR, "--task", "sentence_prediction", "--arch", "bart_tiny_preln",
         "--num-classes", str(len(labels)), "--init-token", "0", "--add-prev-output-tokens", "--max-positions", "512",
         "--criterion", "sentence_prediction", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "8",
         "--max-update", "3", "--cpu", "--save-dir", str(tmp_path / "ckpt"), "--no-epoch-checkpoints"], cli_env)
    ckpt = tmp_path / "ckpt" / "checkpoint_last.pt"
    sentences = (raw / "test.input0").read_text(encoding="utf-8").splitlines()[:5]
    (tmp_path / "in.txt").write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    out = run([sys.executable, str(ROOT / "scripts" / "classify.py"), "--path", str(ckpt), str(tmp_path / "in.txt")],
              cli_env)
    printed = [line.split("\t", 1) for line in out.splitlines() if "\t" in line]
    assert [p[1] for p in printed] == sentences and {p[0] for p in printed} <= set(labels)
    model = bart_ext.load(ckpt)
    logits = model.predict("sentence_classification_head", sentences)
    names = [model.task.label_dictionary[i + model.task.label_dictionary.nspecial] for i in range(len(labels))]
    assert [names[i] for i in logits.argmax(-1).tolist()] == [p[0] for p in printed]
