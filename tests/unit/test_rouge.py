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


def test_fairseq_scorer_scores_text_without_bos_eos_and_refuses_ids():
    """--scoring bart_rouge: the figures of rouge-score on the same pairs; <s> / </s> left in a line are not
    words (rouge-score would count an "s" in every summary); a line of ids is refused."""
    from bart_ext.adapters.fairseq_scoring import RougeScorer

    import logging

    generate_log = logging.getLogger("fairseq_cli.generate")
    bleu_warning = generate_log.makeRecord(generate_log.name, logging.WARNING, __file__, 0, "If you are using BPE on "
                                           "the target side, the BLEU score is computed on BPE tokens", (), None)
    scorer = RougeScorer(None)
    assert not generate_log.filter(bleu_warning)  # fairseq-generate's BLEU advice, with ROUGE as the score
    assert generate_log.filter(generate_log.makeRecord(generate_log.name, logging.INFO, __file__, 0, "Translated", (),
                                                       None))
    for h, r in zip(HYPS, REFS):
        scorer.add_string(f"<s> {r} </s>", f"<s> {h}")
    direct = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = 100 * np.mean([direct.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS)])
    assert scorer.score() == pytest.approx(expected, abs=1e-9)
    assert scorer.ref[0] == REFS[0] and scorer.pred[0] == HYPS[0]
    printed = scorer.result_string()
    assert f"ROUGE-L {expected:.2f} [" in printed and printed.endswith("4 documents)")
    assert RougeScorer(None).result_string() == "ROUGE: no documents with references were scored"
    with pytest.raises(ValueError, match=r"handed it dictionary ids \('1475 9665 20731' \.\.\.\): decode them with "
                                         r"--bpe bart_gpt2"):
        RougeScorer(None).add_string("1475 9665 20731", "12 13")
    numbers = RougeScorer(None)
    numbers.add_string("1990 2000", "1990")  # two numbers are text (a pair of years), not taken for ids
    assert numbers.score() > 0


def test_eval_rouge_args_take_generation_options_and_presets():
    from bart_ext.adapters.fairseq_scoring import generation_settings
    from bart_ext.summarization_data import load_preset

    assert generation_settings("{}") == {}
    assert generation_settings('{"beam": 4, "max_len_b": 60}') == {"beam": 4, "max_len_b": 60}
    assert generation_settings('{"preset": "xsum", "beam": 2}') == {**load_preset("xsum"), "beam": 2}
    for spec, message in [('{"beams": 4}', "beams is not a generation option"),
                          ("beam=4", "'beam=4' is not JSON"),
                          ("[4]", "must be a JSON object"),
                          ('{"preset": "nope"}', "unknown generation preset 'nope'")]:
        with pytest.raises(ValueError, match=message):
            generation_settings(spec)


def test_eval_rouge_metrics_are_document_means_over_batches_and_ranks():
    """Sums of per-document F1 and document counts, summed over batches (and ranks), give the mean over all
    documents: not a mean of batch means."""
    from fairseq import metrics

    from bart_ext.adapters.fairseq_scoring import RougeValidation

    batches = [[{"_rouge_docs": 3, "_rouge1_sum": 1.5, "_rouge2_sum": 0.3, "_rougeL_sum": 0.9}],
               [{"_rouge_docs": 1, "_rouge1_sum": 0.1, "_rouge2_sum": 0.0, "_rougeL_sum": 0.1}],
               [{"loss": 2.0}]]  # a training log: nothing to add
    with metrics.aggregate(new_root=True) as agg:
        for logs in batches:
            RougeValidation.reduce(logs)
        values = agg.get_smoothed_values()
    assert values["rouge1"] == pytest.approx(40.0) and values["rouge2"] == pytest.approx(7.5)
    assert values["rougeL"] == pytest.approx(25.0)
    with metrics.aggregate(new_root=True) as agg:
        RougeValidation.reduce([{"loss": 1.0}])
        assert "rouge1" not in agg.get_smoothed_values()


def test_eval_rouge_names_the_tokenizer_files_a_data_folder_lacks(tmp_path):
    from bart_ext.adapters.fairseq_scoring import RougeValidation

    with pytest.raises(FileNotFoundError, match=rf"^--eval-rouge decodes summaries to text: {tmp_path}/encoder.json "
                                                rf"and {tmp_path}/vocab.bpe \(GPT-2 BPE\), or {tmp_path}/sentencepiece"):
        RougeValidation(None, None, str(tmp_path), "{}", False)
