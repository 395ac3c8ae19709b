"""aclsum's sentence roles as a classification task.

aclsum (Takeshita et al. 2024) marks, for every sentence of a paper's abstract, introduction and
conclusion, whether it states the paper's challenge, its approach or its outcome (the
``highlights`` fields, annotated by hand). Each sentence becomes one example with one of four
labels. A sentence marked for several roles (24 of 3,868 training sentences, mostly approach +
outcome) takes the first in the order challenge, approach, outcome: the order in which a paper
states them, so the earlier stage is the one the sentence introduces. Splits are aclsum's own
(train 100 papers, val 50, test 100); the test papers are those held out of the demo's
pretraining text.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

ROLES = ("challenge", "approach", "outcome")
LABELS = (*ROLES, "none")
SECTIONS = ("abstract", "introduction", "conclusion")
SPLITS = {"train": "train", "valid": "val", "test": "test"}  # ours -> aclsum's


def detokenize(sentence: str) -> str:
    """aclsum's sentences are PTB-tokenized (``"paper , we ( i ) do n't"``); the pretraining text is
    running text, so spaces before punctuation and inside brackets are removed."""
    s = re.sub(r" ([,.;:!?%)\]}])", r"\1", sentence.strip())
    s = re.sub(r"([(\[{$]) ", r"\1", s)
    s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
    return s.replace("`` ", '"').replace(" ''", '"')


def label_of(marks: dict[str, int]) -> str:
    """The label of a sentence whose role marks are ``marks`` (role -> 0/1)."""
    for role in ROLES:
        if marks.get(role):
            return role
    return "none"


def role_examples(records: Iterable[dict]) -> list[tuple[str, str, str]]:
    """``(paper id, sentence, label)`` for every highlighted-or-not sentence of aclsum records.

    Raises:
        ValueError: a record whose highlights do not line up with its sentences (names the paper,
            the section and both lengths).
    """
    out = []
    for rec in records:
        for section in SECTIONS:
            sentences = rec["sentences"].get(section, [])
            marks = {role: rec["highlights"][role].get(section, []) for role in ROLES}
            for role, m in marks.items():
                if len(m) != len(sentences):
                    raise ValueError(f"aclsum paper {rec['id']}: {section} has {len(sentences)} sentences but "
                                     f"{len(m)} '{role}' marks")
            for i, sentence in enumerate(sentences):
                text = detokenize(sentence)
                if text:
                    out.append((rec["id"], text, label_of({role: m[i] for role, m in marks.items()})))
    return out


def check_label_files(raw, splits=SPLITS) -> dict[str, int]:
    """Check ``raw/{split}.input0`` against ``raw/{split}.label`` before binarization: one label per
    sentence, and no label in valid/test that train lacks (fairseq builds the label dictionary from
    train and would map it to ``<unk>``, a class the head does not have).

    Returns:
        split -> number of examples.

    Raises:
        FileNotFoundError: a split's file is missing (names it).
        ValueError: line counts differ, an empty sentence, a label that is not one word, or an unknown
            label (names the file, the line and the label).
    """
    from pathlib import Path

    from bart_ext.files import InputError, read_lines

    raw = Path(raw)
    counts, known = {}, None
    for split in splits:
        inputs, labels = raw / f"{split}.input0", raw / f"{split}.label"
        for f in (inputs, labels):
            if not f.is_file():
                raise FileNotFoundError(f"{f} not found")
        sentences, lines = read_lines(inputs), read_lines(labels)
        n_in = len(sentences)
        if n_in != len(lines):
            raise InputError(f"{labels}: {len(lines)} labels for {n_in} sentences in {inputs}")
        for i, sentence in enumerate(sentences, start=1):
            if not sentence.strip():
                raise InputError(f"{inputs}, line {i}: empty sentence (every example needs text)")
        for i, label in enumerate(lines, start=1):
            # fairseq-preprocess splits a label line at whitespace: "very positive" became two labels, and
            # the batch's targets two sizes (a crash at the first update); an empty line, no label
            if len(label.split()) != 1:
                raise InputError(f"{labels}, line {i}: label {label!r} is " + (
                    "empty" if not label.strip() else "more than one word") + ": a label is one word without "
                    "spaces (fairseq-preprocess splits a line at whitespace), e.g. " + repr("_".join(label.split())
                                                                                             or "none"))
        lines = [label.strip() for label in lines]
        if known is None:
            known = set(lines)
        else:
            for i, label in enumerate(lines, start=1):
                if label not in known:
                    raise InputError(f"{labels}, line {i}: label {label!r} does not occur in the training labels "
                                     f"({', '.join(sorted(known))})")
        counts[split] = n_in
    return counts
