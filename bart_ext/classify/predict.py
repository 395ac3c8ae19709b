"""Predictions of a fine-tuned classifier, and the scores the role experiment reports.

``load_classifier`` reads a ``sentence_prediction`` checkpoint (ours or fairseq's BART) with its
data folder (``input0/dict.txt``, ``label/dict.txt``); ``predict_split`` labels a binarized split,
``predict_sentences`` raw sentences (GPT-2 BPE, as the data was prepared). Scores: accuracy,
macro-F1, and bootstrap intervals over papers (sentences of one paper are not independent).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch


def load_classifier(path: Path, data: Path | None = None, head: str | None = None):
    """(model, task, head name) of checkpoint ``path`` on data folder ``data`` (``open_classifier``)."""
    return open_classifier(path, data, head)[:3]


def open_classifier(path: Path, data: Path | None = None, head: str | None = None):
    """(model, task, head name, leading space) of checkpoint ``path`` on data folder ``data`` (default: the
    checkpoint's ``task.data``); a regression model (``--regression-target``, STS-B) needs no
    ``label/dict.txt``. The last is whether the model read texts with a space before their first word
    (``text_has_leading_space``: yes when trained here, the source tokenizer's way for a ``from-hf`` import).

    Raises:
        FileNotFoundError: the checkpoint or the data folder's dictionaries are missing.
        KeyError: ``head`` (default: the task's ``classification_head_name``) is not in the checkpoint.
    """
    from bart_ext.adapters import import_plugin

    import_plugin()  # bart_ext's tasks and models, and fairseq's loader fixed for torch >= 2.6
    from fairseq import checkpoint_utils

    if not Path(path).exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    overrides = {"load_checkpoint_heads": True, **({"data": str(data)} if data is not None else {})}
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path), arg_overrides=overrides)
    task_cfg = state["cfg"]["task"]
    whose = "--data" if data is not None else "the checkpoint's task.data (no --data given)"
    data = Path(str(task_cfg.data).split(":")[0])
    needs = ("input0/dict.txt",) + (() if getattr(task_cfg, "regression_target", False) else ("label/dict.txt",))
    for need in needs:
        if not (data / need).exists():
            raise FileNotFoundError(f"{data / need} not found: {whose} must be the folder that "
                                    "fairseq-preprocess wrote for sentence_prediction (input0/, label/)")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides=overrides,
                                                                     state=state)
    model = models[0].eval()
    name = head or cfg.task.classification_head_name
    if name not in model.classification_heads:
        raise KeyError(f"{path} has no classification head {name!r} (it has: "
                       f"{', '.join(model.classification_heads) or 'none'})")
    from bart_ext.summarization_data import text_has_leading_space

    return model, task, name, text_has_leading_space(state, None)


@torch.no_grad()
def predict_split(model, task, head: str, split: str, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, gold) label indices (into the label dictionary, specials removed) of ``split``,
    in the split's order."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(dataset, max_sentences=batch_size, max_positions=None,
                                  ignore_invalid_inputs=False).next_epoch_itr(shuffle=False)
    pred, gold = np.zeros(len(dataset), dtype=np.int64), np.zeros(len(dataset), dtype=np.int64)
    for sample in itr:
        logits = model(**sample["net_input"], features_only=True, classification_head_name=head)[0]
        ids = sample["id"].numpy()
        pred[ids] = logits.argmax(-1).numpy()
        gold[ids] = sample["target"].view(-1).numpy()
    return pred, gold


def label_names(task) -> list[str]:
    """The labels in the order of the head's outputs (fairseq's label dictionary after its specials;
    the ``<mask>`` that sentence_prediction appends to every dictionary is not a class)."""
    d = task.label_dictionary
    return [d[i + d.nspecial] for i in range(task.cfg.num_classes)]


def training_labels(dictionary) -> list[str]:
    """The labels a ``label/dict.txt`` holds: its entries after fairseq's specials, less the
    ``madeupwordNNNN`` rows (count 0) with which fairseq-preprocess pads a dictionary to a multiple of 8
    and the ``<mask>`` that sentence_prediction appends."""
    return [symbol for symbol, count in zip(dictionary.symbols[dictionary.nspecial:], dictionary.count[dictionary.nspecial:])
            if symbol != "<mask>" and not (count == 0 and symbol.startswith("madeupword"))]


def check_num_classes(task) -> None:
    """``--task sentence_prediction``: the head's ``num_classes`` must be the number of labels in the data.
    More classes than labels trained a head whose spare outputs name fairseq's padding entries
    (``madeupword0000`` came out of scripts/classify.py); fewer, a target out of the head's range."""
    cfg = getattr(task, "cfg", None)
    dictionary = getattr(task, "label_dictionary", None)
    if cfg is None or dictionary is None or getattr(cfg, "regression_target", False):
        return
    labels = training_labels(dictionary)
    if labels and cfg.num_classes != len(labels):
        from bart_ext.classify.roles import shown

        raise ValueError(f"task.num_classes={cfg.num_classes} (--num-classes), but {cfg.data}/label/dict.txt holds "
                         f"{len(labels)} labels ({shown(labels)}): set task.num_classes={len(labels)}, or give the data folder the "
                         "model was trained with")


def classifier_input(task, parts: Sequence[torch.Tensor], limit: int) -> torch.Tensor:
    """One input as ``sentence_prediction`` builds it from its binarized ``input0`` (and ``input1``): the
    task's ``init_token`` (``<s>``; a task without that field, such as a head added to a denoising model,
    gets ``<s>``), each part's tokens with its ``</s>``, the task's ``separator_token`` (if any) before the
    second part; cut to ``limit`` tokens keeping the final ``</s>``, whose state the head reads."""
    cfg = task.cfg
    init = getattr(cfg, "init_token", task.source_dictionary.bos())
    pieces = []
    if init is not None:
        pieces.append(parts[0].new_tensor([init]))
    for i, part in enumerate(parts):
        if i and getattr(cfg, "separator_token", None) is not None:
            pieces.append(part.new_tensor([cfg.separator_token]))
        pieces.append(part)
    ids = torch.cat(pieces)
    return torch.cat([ids[: limit - 1], ids[-1:]]) if len(ids) > limit else ids


def batches_by_eos(rows: Sequence[torch.Tensor], eos: int, batch_size: int) -> list[list[int]]:
    """Indices of ``rows`` in batches of at most ``batch_size`` whose rows hold as many ``</s>`` each: the
    classification head reads the last one and the model wants the same count in every row of a batch
    (fairseq's BART too), so single texts and pairs are batched apart."""
    counts = [int(r.eq(eos).sum()) for r in rows]
    batches = []
    for n in sorted(set(counts)):
        group = [i for i, c in enumerate(counts) if c == n]
        batches += [group[k : k + batch_size] for k in range(0, len(group), batch_size)]
    return batches


@torch.no_grad()
def predict_sentences(model, task, head: str, sentences: Sequence[str | Sequence[str]], encode: Callable[[str], str],
                      batch_size: int = 64, progress: bool | None = None) -> list[str]:
    """Labels of raw ``sentences`` (a regression model's scores, as text); ``encode`` maps text to the data's
    BPE string (GPT-2 ids as words). An entry that is a pair of texts (``(premise, hypothesis)``: MNLI, RTE,
    ...) is fed as fine-tuning fed ``input0`` and ``input1``. ``progress``: a progress bar on standard error
    (``bart_ext.cli.progress_bar``; by default on a terminal for more than one batch)."""
    from fairseq.data import data_utils

    from bart_ext.cli import progress_bar

    d = task.source_dictionary
    limit = model.max_positions()[0] if isinstance(model.max_positions(), tuple) else model.max_positions()
    rows = []
    for s in sentences:
        parts = [s] if isinstance(s, str) else list(s)
        rows.append(classifier_input(task, [d.encode_line(encode(p), append_eos=True, add_if_not_exist=False).long()
                                            for p in parts], limit))
    regression = getattr(task.cfg, "regression_target", False)
    names = None if regression else label_names(task)
    out: list[str] = [""] * len(rows)
    with progress_bar(len(rows), batch_size, progress, "classify") as bar:
        for batch in batches_by_eos(rows, d.eos(), batch_size):
            src = data_utils.collate_tokens([rows[i] for i in batch], d.pad(), left_pad=False)
            logits = model(src, src.ne(d.pad()).sum(1), features_only=True, classification_head_name=head)[0]
            for i, row in zip(batch, logits):
                out[i] = f"{float(row[0]):.4f}" if regression else names[int(row.argmax())]
            bar.update(len(batch))
    return out


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean())


def macro_f1(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 (a class with no gold and no predicted item scores 0)."""
    f1 = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (gold == c))
        denom = np.sum(pred == c) + np.sum(gold == c)
        f1.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1))


def _resamples(groups: Sequence[str], rounds: int, seed: int):
    """Row indices of ``rounds`` bootstrap resamples of the groups (papers), drawn with replacement."""
    names, index = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(index == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        yield np.concatenate([members[g] for g in rng.integers(0, len(names), len(names))])


def bootstrap(metric: Callable[[np.ndarray, np.ndarray], float], preds: dict[str, np.ndarray], gold: np.ndarray,
              groups: Sequence[str], rounds: int = 1000, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """``metric`` of each system with a 95% percentile interval, resampling ``groups`` (papers) with
    replacement, the same resamples for every system.

    Returns:
        system -> (value on all data, 2.5th percentile, 97.5th percentile).
    """
    samples = {k: [] for k in preds}
    for rows in _resamples(groups, rounds, seed):
        for k, p in preds.items():
            samples[k].append(metric(p[rows], gold[rows]))
    return {k: (metric(p, gold), float(np.percentile(samples[k], 2.5)), float(np.percentile(samples[k], 97.5)))
            for k, p in preds.items()}


def paired_difference(metric: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray,
                      gold: np.ndarray, groups: Sequence[str], rounds: int = 1000,
                      seed: int = 0) -> tuple[float, float, float]:
    """``metric(a) - metric(b)`` with a 95% paired bootstrap interval over ``groups``."""
    diffs = [metric(a[rows], gold[rows]) - metric(b[rows], gold[rows]) for rows in _resamples(groups, rounds, seed)]
    return metric(a, gold) - metric(b, gold), float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))
