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


def has_pairs(raw, splits=SPLITS) -> bool:
    """Whether ``raw`` holds sentence pairs: ``{split}.input1`` beside every ``{split}.input0``.

    Raises:
        FileNotFoundError: some splits have an ``input1`` file and others lack it (names the missing one).
    """
    from pathlib import Path

    raw = Path(raw)
    present = {split: (raw / f"{split}.input1").is_file() for split in splits}
    if any(present.values()) and not all(present.values()):
        given = next(split for split, there in present.items() if there)
        missing = next(split for split, there in present.items() if not there)
        raise FileNotFoundError(f"{raw / f'{missing}.input1'} not found, but {raw / f'{given}.input1'} exists (sentence "
                                "pairs need the second sentences of every split)")
    return all(present.values())


def regression_targets(labels, lines: list[str]) -> int:
    """How many numbers each line of a regression label file holds (the task's ``num_classes``).

    Raises:
        ValueError: a line that is empty, not numbers, not finite, or of another count than the first
            (names the file and the line).
    """
    import math

    from bart_ext.files import InputError

    count = None
    for i, line in enumerate(lines, start=1):
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise InputError(f"{labels}, line {i}: {line.strip()!r} is not a number (--regression: every label "
                             "line holds the example's target values)") from None
        if not values or not all(math.isfinite(v) for v in values):
            raise InputError(f"{labels}, line {i}: " + ("empty label" if not values else f"{line.strip()!r} is not finite")
                             + " (--regression: every label line holds the example's target values)")
        if count is None:
            count = len(values)
        elif len(values) != count:
            raise InputError(f"{labels}, line {i}: {len(values)} values where line 1 holds {count} (every example has "
                             "the same number of regression targets)")
    return count or 0


def check_label_files(raw, splits=SPLITS, regression: bool = False) -> dict[str, int]:
    """Check ``raw/{split}.input0`` (and ``.input1``, for sentence pairs) against ``raw/{split}.label``
    before binarization: one label per example, no empty sentence, and no label in valid/test that
    train lacks (fairseq builds the label dictionary from train and would map it to ``<unk>``, a class
    the head does not have). With ``regression``, labels are numbers (fairseq's ``--regression-target``
    reads them as text), the same count on every line.

    Returns:
        split -> number of examples.

    Raises:
        FileNotFoundError: a split's file is missing (names it).
        ValueError: line counts differ, an empty sentence, a label that is not one word (or, with
            ``regression``, not numbers), or an unknown label (names the file, the line and the label).
    """
    from pathlib import Path

    from bart_ext.files import InputError, read_lines

    raw = Path(raw)
    sides = ("input0", "input1") if has_pairs(raw, splits) else ("input0",)
    counts, known, targets = {}, None, None
    for split in splits:
        inputs, labels = [raw / f"{split}.{side}" for side in sides], raw / f"{split}.label"
        for f in (*inputs, labels):
            if not f.is_file():
                raise FileNotFoundError(f"{f} not found")
        lines = read_lines(labels)
        n_in = None
        for f in inputs:
            sentences = read_lines(f)
            if n_in is None:
                n_in = len(sentences)
            elif len(sentences) != n_in:
                raise InputError(f"{f}: {len(sentences)} sentences for {n_in} in {inputs[0]} (one pair per line)")
            for i, sentence in enumerate(sentences, start=1):
                if not sentence.strip():
                    raise InputError(f"{f}, line {i}: empty sentence (every example needs text)")
        if n_in != len(lines):
            raise InputError(f"{labels}: {len(lines)} labels for {n_in} sentences in {inputs[0]}")
        counts[split] = n_in
        if regression:
            count = regression_targets(labels, lines)
            if targets is not None and count and count != targets:
                raise InputError(f"{labels}: {count} values per line where train's labels hold {targets}")
            targets = targets or count
            continue
        for i, label in enumerate(lines, start=1):
            # fairseq-preprocess splits a label line at whitespace: "very positive" became two labels, and
            # the batch's targets two sizes (a crash at the first update); an empty line, no label
            if len(label.split()) != 1:
                raise InputError(f"{labels}, line {i}: label {label!r} is " + (
                    "empty" if not label.strip() else "more than one word") + ": a label is one word without "
                    "spaces (fairseq-preprocess splits a line at whitespace), e.g. " + repr("_".join(label.split())
                                                                                             or "none")
                    + ("" if len(label.split()) < 2 or not are_numbers(label) else
                       " (numbers for a regression task: pass --regression)"))
        lines = [label.strip() for label in lines]
        if known is None:
            known = set(lines)
        else:
            for i, label in enumerate(lines, start=1):
                if label not in known:
                    raise InputError(f"{labels}, line {i}: label {label!r} does not occur in the training labels "
                                     f"({shown(sorted(known))})" + (" (numbers for a regression task: pass --regression)"
                                                                  if all(map(are_numbers, known | {label})) else ""))
    return counts


def shown(labels: list[str], most: int = 10) -> str:
    """The first ``most`` labels, comma-separated, and "..." for the rest."""
    return ", ".join(labels[:most]) + (", ..." if len(labels) > most else "")


def are_numbers(text: str) -> bool:
    """Whether ``text`` is one or more numbers separated by whitespace."""
    try:
        return bool([float(v) for v in text.split()])
    except ValueError:
        return False
