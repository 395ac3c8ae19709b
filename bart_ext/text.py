"""Plain-text helpers: the embedded default corpus (aclsum) and sentence splitting.

Nothing here downloads at run time; ``scripts/prepare_data.py`` fetches the
registry packages once at set-up (``../shared/ENVIRONMENT.md``).
"""
from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

# Abbreviations common in scientific English that end in "." but not a sentence.
_ABBREVIATIONS = {
    "al", "e.g", "i.e", "etc", "fig", "figs", "eq", "eqs", "sec", "tab", "cf", "vs", "resp",
    "approx", "dr", "mr", "mrs", "ms", "prof", "no", "vol", "pp", "ch", "ref", "refs", "jr", "st",
}
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Split English prose into sentences with a rule-based splitter.

    Boundaries are ``.``, ``!`` or ``?`` followed by whitespace and an upper-case
    letter or digit, except after a known abbreviation or a single initial.
    """
    text = " ".join(text.split())
    if not text:
        return []
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        before = text[start : m.start()].rstrip()
        last_word = before.rsplit(" ", 1)[-1].rstrip(".!?").lower()
        if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
            continue
        sentences.append(text[start : m.start()].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return [s for s in sentences if s]


def aclsum_papers(wheel: Path) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(paper_id, paragraphs)`` for the 250 full papers in the aclsum wheel.

    Args:
        wheel: path to ``aclsum-0.1.2-py3-none-any.whl`` (a zip; nothing is imported).
    """
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if "/paper_jsons/" in n and n.endswith(".json"))
        if not names:
            raise ValueError(f"{wheel}: no aclsum/dataset/paper_jsons/*.json inside; is this the aclsum wheel?")
        for name in names:
            try:
                paper = json.loads(zf.read(name))
                body = paper["pdf_parse"]["body_text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{wheel}:{name}: expected JSON with pdf_parse.body_text ({e})") from e
            paragraphs = [paper.get("abstract") or ""] + [p.get("text", "") for p in body]
            yield Path(name).stem, [p for p in paragraphs if p.strip()]


def aclsum_split(wheel: Path, split: str) -> list[dict]:
    """Records of aclsum's ``{train,val,test}.jsonl`` (summaries and sentence lists)."""
    with zipfile.ZipFile(wheel) as zf:
        name = f"aclsum/dataset/{split}.jsonl"
        try:
            raw = zf.read(name).decode("utf-8")
        except KeyError as e:
            raise ValueError(f"{wheel}: missing {name}") from e
    return [json.loads(line) for line in raw.split("\n") if line.strip()]  # JSON strings may hold U+2028


def gpt2_detokenize(symbols: list[str], decode) -> str:
    """Text of GPT-2 BPE symbols as fairseq writes them (ids as strings).

    Non-id symbols (``<mask>``, ``<unk>``, fairseq's escaped ``<<unk>>``) are kept
    as visible markers instead of failing the decoder.

    Args:
        symbols: dictionary symbols, e.g. ``"464" "3290" "<mask>"``.
        decode: GPT-2's ``decode(list[int]) -> str`` (fairseq ``gpt2_bpe_utils.get_encoder(...).decode``).
    """
    out, ids = [], []
    for sym in symbols:
        if sym.isdigit():
            ids.append(int(sym))
            continue
        if ids:
            out.append(decode(ids))
            ids = []
        out.append(f" {sym}")
    if ids:
        out.append(decode(ids))
    return "".join(out).strip()
