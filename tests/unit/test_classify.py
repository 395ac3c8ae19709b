"""Classification heads (fairseq BART's rule and names), aclsum's sentence roles, and the scores."""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
import torch
from fairseq.models.bart import BARTModel
from fairseq.models.bart.model import bart_base_architecture

from bart_ext.classify.heads import last_eos_states, roll_right
from bart_ext.classify.predict import accuracy, bootstrap, macro_f1, paired_difference
from bart_ext.classify.roles import (check_label_files, detokenize, has_pairs, label_of, regression_targets,
                                     role_examples)
from tests.helpers import dictionary, fake_task, preln_args
from user_dir.bart_preln import BartPreln


def fairseq_bart_with_head(d, head="mnli", num_classes=3, inner_dim=10):
    args = argparse.Namespace(encoder_layers=2, decoder_layers=2, encoder_embed_dim=12, decoder_embed_dim=12,
                              encoder_ffn_embed_dim=14, decoder_ffn_embed_dim=14, encoder_attention_heads=3,
                              decoder_attention_heads=3, dropout=0.0, max_source_positions=64,
                              max_target_positions=64)
    bart_base_architecture(args)
    torch.manual_seed(0)
    model = BARTModel.build_model(args, fake_task(d))
    model.register_classification_head(head, num_classes=num_classes, inner_dim=inner_dim)
    with torch.no_grad():  # LayerNorms away from (1, 0), so that a wrong placement shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def sentences(d, seed=0):
    """Right-padded rows ending in </s>; row 1 is a pair (two </s>), as every row must have as many."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(d.nspecial, len(d), (3, 10), generator=g)
    src[:, 0] = d.bos()
    src[:, 4] = d.eos()  # a separator </s> in every row
    src[:, -1] = d.eos()
    src[1, -3:] = d.pad()
    src[1, -4] = d.eos()
    return src


def test_head_equals_fairseq_bart_with_copied_weights():
    d = dictionary()
    ref = fairseq_bart_with_head(d)
    ours = BartPreln.build_model(preln_args(post_ln=True, load_checkpoint_heads=True), fake_task(d)).eval()
    ours.load_state_dict(dict(ref.state_dict()))
    assert list(ours.classification_heads) == ["mnli"]
    src = sentences(d)
    prev = roll_right(src, d.pad())
    with torch.no_grad():
        expected = ref(src, None, prev, features_only=True, classification_head_name="mnli")[0]
        got = ours(src, None, prev, features_only=True, classification_head_name="mnli")[0]
        rolled = ours(src, None, features_only=True, classification_head_name="mnli")[0]
    assert expected.shape == (3, 3)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(rolled, got, atol=0, rtol=0)  # no prev_output_tokens: the same roll


def test_roll_right_is_fairseqs_roll_dataset():
    from fairseq.data import RollDataset

    d = dictionary()
    src = sentences(d, seed=3)
    rows = [r[r.ne(d.pad())] for r in src]
    rolled = RollDataset(rows, 1)
    got = roll_right(src, d.pad())
    for i, row in enumerate(rows):
        assert torch.equal(got[i, : len(row)], rolled[i])
        assert bool(got[i, len(row):].eq(d.pad()).all())


def test_rows_with_different_numbers_of_eos_are_refused():
    d = dictionary()
    src = sentences(d)
    src[0, 4] = 7  # row 0 loses its separator
    with pytest.raises(ValueError, match=r"same number of </s> .*\[1, 2\]"):
        last_eos_states(torch.randn(3, 10, 4), src, d.eos())


def test_checkpoint_heads_are_added_dropped_or_kept_as_fairseq_does(caplog):
    d = dictionary()
    ref = fairseq_bart_with_head(d)
    state = dict(ref.state_dict())
    # not loading checkpoint heads: a head the model lacks is dropped, with a warning naming it
    model = BartPreln.build_model(preln_args(post_ln=True), fake_task(d))
    with caplog.at_level(logging.WARNING):
        model.load_state_dict(dict(state))
    assert "classification head 'mnli' of the checkpoint dropped (not in this model)" in caplog.text
    assert len(model.classification_heads) == 0
    # a head of the same name but another shape is dropped; the model's fresh head stays
    model = BartPreln.build_model(preln_args(post_ln=True), fake_task(d))
    model.register_classification_head("mnli", num_classes=2)
    fresh = model.classification_heads["mnli"].out_proj.weight.clone()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model.load_state_dict(dict(state))
    assert "3 classes x 10 inner in the checkpoint, 2 x 12 here" in caplog.text
    assert torch.equal(model.classification_heads["mnli"].out_proj.weight, fresh)
    # a new head next to a loaded one: the loaded one takes the checkpoint's weights
    model = BartPreln.build_model(preln_args(post_ln=True, load_checkpoint_heads=True), fake_task(d))
    model.register_classification_head("roles", num_classes=4)
    model.load_state_dict(dict(state))
    assert set(model.classification_heads) == {"mnli", "roles"}
    assert torch.equal(model.classification_heads["mnli"].dense.weight, ref.classification_heads["mnli"].dense.weight)


def test_a_head_the_model_lacks_is_a_clear_error():
    d = dictionary()
    model = BartPreln.build_model(preln_args(), fake_task(d))
    model.register_classification_head("roles", num_classes=4)
    with pytest.raises(KeyError, match="no classification head 'mnli' in this model \\(it has: roles\\)"):
        model(sentences(d), None, classification_head_name="mnli")


def test_pooler_settings_reach_the_head():
    d = dictionary()
    model = BartPreln.build_model(preln_args(pooler_dropout=0.3, pooler_activation_fn="relu"), fake_task(d))
    model.register_classification_head("x", num_classes=2, inner_dim=5)
    head = model.classification_heads["x"]
    assert head.dropout.p == 0.3 and head.activation == "relu" and head.dense.out_features == 5
    with pytest.raises(ValueError, match="--pooler-activation-fn 'swish'"):
        BartPreln.build_model(preln_args(pooler_activation_fn="swish"), fake_task(d)).register_classification_head(
            "y", num_classes=2)


def test_role_labels_detokenization_and_misaligned_records():
    assert label_of({"challenge": 0, "approach": 1, "outcome": 1}) == "approach"
    assert label_of({"challenge": 1, "approach": 1, "outcome": 0}) == "challenge"
    assert label_of({"challenge": 0, "approach": 0, "outcome": 0}) == "none"
    assert detokenize("In this paper , we ( i ) do n't use `` it '' .") == 'In this paper, we (i) don\'t use "it".'
    rec = {"id": "P1", "sentences": {"abstract": ["A .", "B ."], "introduction": [], "conclusion": ["C ."]},
           "highlights": {"challenge": {"abstract": [1, 0], "introduction": [], "conclusion": [0]},
                          "approach": {"abstract": [0, 1], "introduction": [], "conclusion": [0]},
                          "outcome": {"abstract": [0, 1], "introduction": [], "conclusion": [1]}}}
    assert role_examples([rec]) == [("P1", "A.", "challenge"), ("P1", "B.", "approach"), ("P1", "C.", "outcome")]
    rec["highlights"]["outcome"]["conclusion"] = [1, 0]
    with pytest.raises(ValueError, match="aclsum paper P1: conclusion has 1 sentences but 2 'outcome' marks"):
        role_examples([rec])


def test_label_files_are_checked_before_binarization(tmp_path):
    for split, rows in (("train", ["a", "b"]), ("valid", ["a"]), ("test", ["b", "a"])):
        (tmp_path / f"{split}.input0").write_text("".join(f"sentence {i}\n" for i in range(len(rows))))
        (tmp_path / f"{split}.label").write_text("".join(r + "\n" for r in rows))
    assert check_label_files(tmp_path) == {"train": 2, "valid": 1, "test": 2}
    # a sentence holding U+2028 (news text does) is one line, as fairseq-preprocess reads it; it was two
    (tmp_path / "train.input0").write_text("sentence\u2028zero\nsentence 1\n", encoding="utf-8")
    assert check_label_files(tmp_path) == {"train": 2, "valid": 1, "test": 2}
    (tmp_path / "test.label").write_text("b\nc\n")
    with pytest.raises(ValueError, match=r"test.label, line 2: label 'c' does not occur in the training labels \(a, b\)"):
        check_label_files(tmp_path)
    (tmp_path / "test.label").write_text("b\n")
    with pytest.raises(ValueError, match=r"test.label: 1 labels for 2 sentences in .*test.input0"):
        check_label_files(tmp_path)
    (tmp_path / "test.label").write_text("b \na\n")  # spaces around a label are no second word
    assert check_label_files(tmp_path) == {"train": 2, "valid": 1, "test": 2}
    # fairseq-preprocess splits a label line at whitespace: "very positive" became the labels "very" and
    # "positive" and training stopped at its first batch (targets of two sizes); an empty line, no label
    for rows, said in ((["a", "very positive"], r"line 2: label 'very positive' is more than one word: .* "
                                                r"e.g. 'very_positive'"),
                       (["", "b"], r"line 1: label '' is empty")):
        (tmp_path / "train.label").write_text("".join(r + "\n" for r in rows))
        with pytest.raises(ValueError, match=r"train.label, " + said):
            check_label_files(tmp_path)
    (tmp_path / "train.label").write_text("a\nb\n")
    (tmp_path / "valid.input0").write_text("  \n")
    with pytest.raises(ValueError, match=r"valid.input0, line 1: empty sentence"):
        check_label_files(tmp_path)
    (tmp_path / "valid.label").unlink()
    with pytest.raises(FileNotFoundError, match="valid.label not found"):
        check_label_files(tmp_path)


def test_pair_and_regression_label_files_are_checked(tmp_path):
    """Sentence pairs (``.input1`` beside ``.input0``) and numeric labels (``--regression``) of one's own data:
    a second side that some splits lack, or of another length, an empty second sentence, and labels that are
    not numbers, not finite, or of differing counts are refused naming the file and line."""
    for split, n in (("train", 3), ("valid", 1), ("test", 2)):
        for side in ("input0", "input1"):
            (tmp_path / f"{split}.{side}").write_text("".join(f"{side} sentence {i}\n" for i in range(n)))
        (tmp_path / f"{split}.label").write_text("".join(f"{0.5 * i}\n" for i in range(n)))
    assert has_pairs(tmp_path)
    assert check_label_files(tmp_path, regression=True) == {"train": 3, "valid": 1, "test": 2}
    assert regression_targets(tmp_path / "train.label", ["1 2.5", "0 -1e-3"]) == 2
    # a regression file read as classes: valid's 0.0 is a class of train's, test's 0.5 too; a score train
    # lacks is named with the flag to pass
    (tmp_path / "test.label").write_text("0.0\n4.75\n")
    with pytest.raises(ValueError, match=r"test.label, line 2: label '4.75' does not occur in the training labels "
                                         r"\(0.0, 0.5, 1.0\) \(numbers for a regression task: pass --regression\)"):
        check_label_files(tmp_path)
    for rows, said in ((["1.0", "high"], r"line 2: 'high' is not a number"),
                       (["1.0", "nan"], r"line 2: 'nan' is not finite"),
                       (["1.0", ""], r"line 2: empty label"),
                       (["1.0", "1.0 2.0"], r"line 2: 2 values where line 1 holds 1")):
        (tmp_path / "test.label").write_text("".join(r + "\n" for r in rows))
        with pytest.raises(ValueError, match=r"test.label, " + said):
            check_label_files(tmp_path, regression=True)
    (tmp_path / "test.label").write_text("1.0 2.0\n3 4\n")
    with pytest.raises(ValueError, match=r"test.label: 2 values per line where train's labels hold 1"):
        check_label_files(tmp_path, regression=True)
    (tmp_path / "test.label").write_text("1\n2\n")
    (tmp_path / "test.input1").write_text("only one\n")
    with pytest.raises(ValueError, match=r"test.input1: 1 sentences for 2 in .*test.input0 \(one pair per line\)"):
        check_label_files(tmp_path, regression=True)
    (tmp_path / "test.input1").write_text("one\n \n")
    with pytest.raises(ValueError, match=r"test.input1, line 2: empty sentence"):
        check_label_files(tmp_path, regression=True)
    (tmp_path / "valid.input1").unlink()
    with pytest.raises(FileNotFoundError, match=r"valid.input1 not found, but .*train.input1 exists"):
        check_label_files(tmp_path, regression=True)
    for split in ("train", "test"):  # no second side anywhere: single sentences
        (tmp_path / f"{split}.input1").unlink()
    assert not has_pairs(tmp_path) and check_label_files(tmp_path, regression=True) == {"train": 3, "valid": 1, "test": 2}


def test_num_classes_must_be_the_number_of_labels(tmp_path):
    """A 3-label data set fine-tuned with configs/finetune/roles.yaml's num_classes 4 trained a 4-way head
    whose spare output named fairseq's padding entry (classify.py printed "madeupword0000"); the model
    is refused before training, naming the field, the file and the labels."""
    from types import SimpleNamespace

    from fairseq.data import Dictionary
    from fairseq.tasks.sentence_prediction import SentencePredictionTask

    from bart_ext.classify.predict import check_num_classes, training_labels

    built = Dictionary()
    for label in ("neutral", "neutral", "neg", "pos"):
        built.add_symbol(label)
    built.finalize(padding_factor=8)  # as fairseq-preprocess writes label/dict.txt: madeupwords to 8 rows
    (tmp_path / "label").mkdir()
    built.save(str(tmp_path / "label" / "dict.txt"))
    labels = SentencePredictionTask.load_dictionary(str(tmp_path / "label" / "dict.txt"))  # appends <mask>
    assert "madeupword0000" in labels.symbols and "<mask>" in labels.symbols
    assert training_labels(labels) == ["neutral", "neg", "pos"]
    task = SimpleNamespace(cfg=SimpleNamespace(num_classes=4, regression_target=False, data=str(tmp_path)),
                           label_dictionary=labels)
    with pytest.raises(ValueError, match=rf"^task.num_classes=4 \(--num-classes\), but {tmp_path}/label/dict.txt "
                                         r"holds 3 labels \(neutral, neg, pos\): set task.num_classes=3, or give the data "
                                         r"folder the model was trained with$"):
        check_num_classes(task)
    with pytest.raises(ValueError, match="task.num_classes=4"):  # the model refuses to be built
        BartPreln.build_model(preln_args(), task)
    task.cfg.num_classes = 3
    check_num_classes(task)
    task.cfg.regression_target, task.label_dictionary = True, None  # STS-B: one output, no label file
    check_num_classes(task)


def test_scores_and_bootstrap_intervals():
    gold = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    assert accuracy(pred, gold) == pytest.approx(4 / 6)
    # per class F1: 0: 2*1/(2+2) = 0.5; 1: 2*2/(3+2) = 0.8; 2: 2*1/(1+2) = 2/3
    assert macro_f1(pred, gold, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert macro_f1(pred, gold, 4) == pytest.approx((0.5 + 0.8 + 2 / 3) / 4)  # an absent class scores 0
    papers = ["p1", "p1", "p2", "p2", "p3", "p3"]
    res = bootstrap(accuracy, {"pred": pred, "gold": gold}, gold, papers, rounds=300)
    assert res["gold"] == (1.0, 1.0, 1.0)
    value, lo, hi = res["pred"]
    assert value == pytest.approx(4 / 6) and 0.0 <= lo < value < hi <= 1.0
    d, lo, hi = paired_difference(accuracy, gold, pred, gold, papers, rounds=300)
    assert d == pytest.approx(2 / 6) and 0.0 <= lo <= d <= hi


def test_a_fairseq_bart_checkpoint_file_with_a_head_loads(tmp_path):
    """The released bart.large.mnli layout (an argparse ``args``, task sentence_prediction, head
    ``mnli``), read by fairseq's loader, into our Post-LN model: the head's outputs are fairseq's."""
    from fairseq import checkpoint_utils

    import user_dir  # noqa: F401  (argparse Namespace allowed in checkpoints)

    d = dictionary()
    ref = fairseq_bart_with_head(d)
    args = argparse.Namespace(task="sentence_prediction", arch="bart_large", criterion="sentence_prediction",
                              num_classes=3, data=str(tmp_path))
    path = tmp_path / "model.pt"
    history = [{"criterion_name": "SentencePredictionCriterion", "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": 0.3}, "num_updates": 30968}]
    torch.save({"args": args, "model": ref.state_dict(), "extra_state": {}, "optimizer_history": history,
                "last_optimizer_state": None}, path)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    ours = BartPreln.build_model(preln_args(post_ln=True, load_checkpoint_heads=True), fake_task(d)).eval()
    ours.load_state_dict(state["model"])
    src = sentences(d, seed=5)
    with torch.no_grad():
        expected = ref(src, None, roll_right(src, d.pad()), features_only=True, classification_head_name="mnli")[0]
        got = ours(src, None, features_only=True, classification_head_name="mnli")[0]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
