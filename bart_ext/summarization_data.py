"""Summarization data: document/summary pairs -> BPE -> fairseq's translation format.

The default data is aclsum (Takeshita et al. 2024: 250 ACL papers, each with
three one-sentence aspect summaries). A pair is

    source  the paper's abstract, introduction and conclusion sentences, in that order, on one line
    target  its challenge, approach and outcome summaries, in that order, joined by spaces

aclsum's own splits are kept: train 100, val 50 (fairseq's ``valid``), test 100.
The three aspects together make a short abstractive summary (about 70 words)
written by annotators, not copied from the paper. The abstract would be the
other choice; it is in the source already, so it would test copying.
"""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bart_ext.files import InputError, read_lines, write_atomic
from bart_ext.text import aclsum_split

logger = logging.getLogger(__name__)

SPLITS = {"train": "train", "valid": "val", "test": "test"}  # fairseq split -> aclsum split
ASPECTS = ("challenge", "approach", "outcome")
SECTIONS = ("abstract", "introduction", "conclusion")


@dataclass
class Pair:
    id: str
    source: str
    target: str


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def aclsum_pairs(wheel: Path, split: str) -> list[Pair]:
    """aclsum's ``split`` (train/valid/test) as document/summary pairs."""
    pairs = []
    for rec in aclsum_split(wheel, SPLITS[split]):
        rid = rec.get("id", "?")
        summary, sentences = rec.get("summary"), rec.get("sentences")
        if not isinstance(summary, dict) or not isinstance(sentences, dict):
            raise ValueError(f"{wheel}: aclsum {SPLITS[split]} record {rid}: expected 'summary' and 'sentences' dicts")
        missing = [a for a in ASPECTS if not _one_line(summary.get(a, ""))]
        if missing:
            raise ValueError(f"{wheel}: aclsum record {rid}: empty summary field(s) {', '.join(missing)}")
        source = _one_line(" ".join(s for sec in SECTIONS for s in sentences.get(sec, [])))
        if not source:
            raise ValueError(f"{wheel}: aclsum record {rid}: no sentences in {', '.join(SECTIONS)}")
        pairs.append(Pair(str(rid), source, " ".join(_one_line(summary[a]) for a in ASPECTS)))
    return pairs


def aclsum_test_ids(wheel: Path) -> set[str]:
    """Papers whose summaries are the summarization test set: kept out of pretraining text."""
    return {str(r["id"]) for r in aclsum_split(wheel, SPLITS["test"])}


def read_pairs(folder: Path, split: str) -> list[Pair]:
    """``folder/{split}.source`` and ``.target`` (one document / summary per line, aligned)."""
    src, tgt = folder / f"{split}.source", folder / f"{split}.target"
    for path in (src, tgt):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found (expected {{train,valid,test}}.{{source,target}} in {folder})")
    sources, targets = read_lines(src), read_lines(tgt)
    if len(sources) != len(targets):
        raise InputError(f"{src} has {len(sources)} lines but {tgt} has {len(targets)}: they must be aligned")
    pairs = []
    for i, (s, t) in enumerate(zip(sources, targets), 1):
        for path, text in ((src, s), (tgt, t)):
            if not text.strip():
                raise InputError(f"{path}:{i}: empty line (every document and summary needs text)")
        pairs.append(Pair(f"{split}-{i}", _one_line(s), _one_line(t)))
    return pairs


def write_pairs(pairs: list[Pair], folder: Path, split: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, texts in (("source", [p.source for p in pairs]), ("target", [p.target for p in pairs]),
                          ("id", [p.id for p in pairs])):
        write_atomic(folder / f"{split}.{suffix}", "".join(t + "\n" for t in texts))


def encode_lines(texts: list[str], encoder) -> list[str]:
    """Dictionary symbols as fairseq-preprocess reads them: GPT-2 BPE ids, or sentencepiece pieces (their ids
    were written before, which a dictionary of pieces read as 70% ``<unk>``). Each text gets a leading
    space, as running text has it in pretraining, so its first word is a word start."""
    return [" ".join(symbols) for symbols in encoder.encode_symbols([" " + t for t in texts])]


def binarize(bpe_dir: Path, dictionary: Path, dest: Path, workers: int = 2, max_unk_percent: float = 5.0) -> None:
    """fairseq-preprocess in translation format with the pretrained ``dictionary`` on both sides.

    A dictionary built from the pretraining text can miss a few types of new text (they map to
    ``<unk>``, with a warning); more than ``max_unk_percent`` of a file means a wrong dictionary.
    """
    if not dictionary.exists():
        raise FileNotFoundError(f"{dictionary} not found: the pretrained model's dict.txt is needed")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", "source", "--target-lang", "target",
           "--srcdict", str(dictionary), "--tgtdict", str(dictionary), "--destdir", str(tmp),
           "--workers", str(workers)]
    for split in ("train", "valid", "test"):
        if (bpe_dir / f"{split}.source").exists():
            cmd += [f"--{split}pref", str(bpe_dir / split)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-preprocess failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    unk = re.findall(r"\[(source|target)\] (\S+): .*?([0-9.e+-]+)% replaced", proc.stdout + proc.stderr)
    shares = {(side, path): float(share) for side, path, share in unk}
    bad = {k: v for k, v in shares.items() if v > max_unk_percent}
    if bad:
        raise ValueError(f"{dictionary} does not fit this BPE: " + "; ".join(
            f"{path} ({side}) {share:g}% of tokens are <unk>" for (side, path), share in bad.items())
            + f" (at most {max_unk_percent:g}% allowed)")
    for (side, path), share in shares.items():
        if share > 0:
            logger.warning("%s (%s): %g%% of tokens not in %s map to <unk>", path, side, share, dictionary)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def read_generate_output(path: Path) -> dict[int, dict[str, list[str]]]:
    """fairseq-generate's ``S-``/``T-``/``H-``/``P-`` lines by sample id: the symbols of each."""
    rows: dict[int, dict[str, list[str]]] = {}
    for line in read_lines(path):
        tag, _, rest = line.partition("\t")
        if len(tag) > 2 and tag[0] in "STHP" and tag[1] == "-" and tag[2:].isdigit():
            fields = rest.split("\t")
            rows.setdefault(int(tag[2:]), {}).setdefault(tag[0], (fields[-1] if fields else "").split())
    return rows


PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "generate"


def load_preset(name: str) -> dict:
    """A named decoding preset (``configs/generate/NAME.yaml``): fairseq generation options."""
    from omegaconf import OmegaConf

    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ValueError(f"unknown generation preset {name!r} ({path} not found); known: {', '.join(known)}")
    return dict(OmegaConf.to_container(OmegaConf.load(path)))


def preset_args(name: str) -> list[str]:
    """The preset as fairseq-generate options, e.g. ``--beam 6 --lenpen 1.0 ...``."""
    args = []
    for key, value in load_preset(name).items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def source_length_limit(task_cfg, model_max_positions: int) -> int:
    """The longest source, ``<s>`` and ``</s>`` included, that a model sees: its position table, or
    the shorter ``max_source_positions`` its summarization fine-tuning cut sources to
    (``truncate_source``). Other tasks' ``max_source_positions`` do not cut (bart_denoising's 1024)."""
    limit = int(model_max_positions)
    if task_cfg is not None and task_cfg.get("truncate_source") and task_cfg.get("max_source_positions"):
        limit = min(limit, int(task_cfg.get("max_source_positions")))
    return limit


def text_has_leading_space(state: dict, prefix_space: bool | None) -> bool:
    """Whether the model read each text with a space before its first word. bart_ext's data preparation
    (pretraining, LDDL, summarization, classification, ``bart_ext.load``) gives every text one, as running
    text has it, so a model trained here expects " Handling" where GPT-2 BPE alone encodes "Handling".
    A checkpoint ``from-hf`` wrote and nobody trained since keeps its source tokenizer's convention
    (``add_prefix_space``; none for fairseq's and transformers' BART). ``prefix_space`` overrides: False
    for a model fine-tuned on data binarized with fairseq's own tools."""
    if prefix_space is not None:
        return bool(prefix_space)
    extra = state.get("extra_state") or {}
    return bool(extra.get("text_leading_space", False)) if extra.get("imported_from") else True
