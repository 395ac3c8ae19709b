"""A CTranslate2 model folder from a transformers folder written by ``to_hf`` (imports ctranslate2).

CTranslate2's transformers converter reads ``normalize_before`` from the config (``to_hf`` writes it)
and, for mBART-layout configs without an mBART tokenizer, sets no decoder start token; fairseq's
BART starts with ``</s>``, so the converted ``config.json`` gets ``decoder_start_token: "</s>"``.
Decode as fairseq does by passing the target prefix ``<s>`` (README, "Models in and out").
"""
from __future__ import annotations

import json
from pathlib import Path


def convert_hf_folder(hf_dir: Path, out_dir: Path, quantization: str | None = None) -> Path:
    """Convert ``hf_dir`` into ``out_dir`` (which must not exist); ``quantization`` as CTranslate2's
    (``int8``, ``int8_float32``, ``float16``, ...; None keeps fp32)."""
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(hf_dir)).convert(str(out_dir), quantization=quantization)
    config_path = Path(out_dir) / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["decoder_start_token"] = "</s>"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return Path(out_dir)


def translate_like_fairseq(translator, sources: list[list[str]], *, beam: int, max_len: int, lenpen: float = 1.0,
                           min_len: int = 1, no_repeat_ngram_size: int = 0, max_batch_size: int = 0,
                           bos: str = "<s>", eos: str = "</s>", patience: int = 20) -> list[list[str]]:
    """fairseq's beam-search output through a CTranslate2 ``translator`` (tokens from ``<s>`` to
    ``</s>``, both included), for sources as token strings.

    Three rules of fairseq's SequenceGenerator that CTranslate2's ``translate_batch`` lacks are
    applied around it. (1) At ``max_len`` tokens fairseq ends every live beam with a forced ``</s>``,
    scored with the model's log-probability of ``</s>``; CTranslate2 ends them on a freely chosen
    token. (2) fairseq keeps the first ``beam`` hypotheses to finish, in the order they finish;
    CTranslate2 keeps the best-scoring ones, so a beam ended at the limit on its free token can
    push out a hypothesis that finished earlier. (3) A hypothesis' score is the sum of its tokens'
    plain log-probabilities; CTranslate2 removes blocked n-grams and an early ``</s>`` before its
    softmax, so its scores are renormalised.
    So CTranslate2 searches, with ``patience``, past fairseq's stopping point, returning every
    hypothesis that finished; those it ended at the limit (``max_len`` tokens from ``<s>``: the live
    beams, save one that fairseq took from below the first ``beam`` candidates when one of those
    ended) get fairseq's forced ``</s>`` appended; the first ``beam`` to finish are rescored with
    ``score_batch`` (plain log-probabilities) and the best after fairseq's length normalisation
    (length ** ``lenpen``) is returned. What stays different: CTranslate2's renormalised scores
    still decide which beams survive each step, so with n-gram blocking or a minimum length the
    candidates themselves can differ (BENCHMARKS.md). The longer search costs time: this is for
    checking outputs against fairseq's, not for speed."""
    results = translator.translate_batch(
        sources, target_prefix=[[bos]] * len(sources), beam_size=beam, patience=patience,
        num_hypotheses=beam * patience, return_scores=True, length_penalty=lenpen,
        max_decoding_length=max_len, min_decoding_length=min_len,
        no_repeat_ngram_size=no_repeat_ngram_size, return_end_token=True, max_batch_size=max_batch_size)
    candidates = []
    for r in results:
        finished: dict[tuple, float] = {}
        for h, score in zip(r.hypotheses, r.scores):
            c = tuple(h) if h and h[-1] == eos else (*h, eos)
            finished[c] = max(score, finished.get(c, score))
        # in the order they finished: by length (the step), then (within a step) by score
        ordered = sorted(finished, key=lambda c: (len(c), -finished[c]))
        # enough to hold the first `beam` to finish once the last step's are reordered by fairseq's scores
        cut = len(ordered[min(beam, len(ordered)) - 1])
        candidates.append([c for c in ordered if len(c) <= cut])
    pairs = [(sources[i], list(c[1:-1])) for i, cs in enumerate(candidates) for c in cs]
    # score_batch starts after the decoder start token and appends </s>; with the target starting
    # at <s>, log p(<s>) is counted, as fairseq counts it
    scored = translator.score_batch([s for s, _ in pairs], [[bos, *t] for _, t in pairs],
                                    max_batch_size=max_batch_size)
    best, k = [], 0
    for cs in candidates:
        sums = [sum(scored[k + j].log_probs) for j in range(len(cs))]
        k += len(cs)
        first = sorted(range(len(cs)), key=lambda j: (len(cs[j]), -sums[j]))[:beam]
        best.append(list(cs[max(first, key=lambda j: sums[j] / len(cs[j]) ** lenpen)]))
    return best
