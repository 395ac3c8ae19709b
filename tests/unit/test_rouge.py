"""scripts/rouge.py equals rouge-score called directly; its intervals bracket the mean."""
from __future__ import annotations

import numpy as np
import pytest
from rouge_score import rouge_scorer

from bart_ext.rouge import bootstrap, lsum_form
from scripts.rouge import main as rouge_main

HYPS = ["The cats were sitting on the mat. They slept.", "A new model improves summarization.",
        "Results are reported on two datasets.", "we propose nothing"]
REFS = ["The cat sat on the mat. It was asleep.", "We propose a model that improves abstractive summarization.",
        "We report results on XSum and CNN-DM.", "A method for parsing is proposed."]


def test_rouge_script_equals_rouge_score_directly(tmp_path):
    (tmp_path / "hyp").write_text("\n".join(HYPS) + "\n")
    (tmp_path / "ref").write_text("\n".join(REFS) + "\n")
    table = rouge_main([str(tmp_path / "hyp"), str(tmp_path / "ref"), "--bootstrap", "200"])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    direct = [scorer.score(r.replace(". ", ".\n"), h.replace(". ", ".\n")) for h, r in zip(HYPS, REFS)]
    for m in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = 100 * np.mean([d[m].fmeasure for d in direct])
        assert table[m]["f1"] == pytest.approx(expected, abs=1e-9), m
        assert table[m]["low"] <= table[m]["f1"] <= table[m]["high"]
    assert table["rouge1"]["f1"] > 0


def test_lsum_is_summary_level():
    from bart_ext.rouge import per_document

    swapped = per_document(["It was asleep. The cat sat on the mat."], ["The cat sat on the mat. It was asleep."])
    assert swapped["rougeLsum"][0] == pytest.approx(1.0) and swapped["rougeL"][0] < 0.8


def test_lsum_splits_sentences_and_misaligned_files_are_refused(tmp_path):
    assert lsum_form("First one. Second one.") == "First one.\nSecond one."
    assert lsum_form("Already\nsplit") == "Already\nsplit"
    (tmp_path / "hyp").write_text("a\nb\n")
    (tmp_path / "ref").write_text("a\n")
    with pytest.raises(SystemExit, match="2 hypotheses but 1 references"):
        rouge_main([str(tmp_path / "hyp"), str(tmp_path / "ref")])
    (tmp_path / "empty").write_text("")
    with pytest.raises(SystemExit, match="empty holds no summaries"):
        rouge_main([str(tmp_path / "empty"), str(tmp_path / "ref")])


def test_bootstrap_interval():
    values = np.random.default_rng(0).uniform(0.2, 0.6, size=400)
    ci = bootstrap(values, 2000, seed=1)
    assert ci.low < ci.mean < ci.high and ci.high - ci.low < 0.05
    assert bootstrap(values, 2000, seed=1) == ci  # seeded
    assert bootstrap(np.full(10, 0.3)).low == pytest.approx(0.3)
