"""What ``scripts/convert.py from-hf | to-hf | to-ct2`` do.

Every command writes into a temporary folder beside ``OUT_DIR`` and moves the finished files in at
the end, so a refused or failed conversion leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from bart_ext.convert import hf, vocab
from bart_ext.convert.hf import ConversionError, ModelShape
from bart_ext.summarization_data import source_length_limit, text_has_leading_space

logger = logging.getLogger(__name__)

# fairseq's BART starts decoding with </s> and forces <s> (the hub interface, our --force-bos).
START = {"decoder_start_token_id": 2, "forced_bos_token_id": 0, "bos_token_id": 0, "eos_token_id": 2,
         "pad_token_id": 1, "forced_eos_token_id": 2}


@contextlib.contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A scratch folder whose files land in ``out_dir`` only if the block finishes."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        out_dir.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            target = out_dir / f.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            f.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hf_generation_config(preset: dict | None) -> dict:
    """transformers ``generate`` settings that decode as ``fairseq-generate`` with a preset of
    ``configs/generate`` (beam, lenpen, max_len_b, min_len, no_repeat_ngram_size).

    fairseq counts the forced ``<s>`` and the final ``</s>`` in the length it normalises by, as
    transformers counts new tokens; ``max_len_b`` tokens may precede ``</s>`` (``max_new_tokens`` + 1)
    and ``min_len`` must (``min_new_tokens``); a sentence ends when ``beam`` hypotheses have ended
    (``early_stopping``)."""
    out = dict(START)
    if not preset:
        return out
    known = {"beam", "lenpen", "max_len_b", "min_len", "no_repeat_ngram_size", "max_len_a"}
    unknown = sorted(set(preset) - known)
    if unknown:
        raise ConversionError(f"preset fields without a transformers equivalent: {', '.join(unknown)}")
    if preset.get("max_len_a", 0):
        raise ConversionError(f"max_len_a {preset['max_len_a']}: transformers has no length relative to the source")
    out.update(num_beams=int(preset.get("beam", 1)), length_penalty=float(preset.get("lenpen", 1.0)))
    if out["num_beams"] > 1:
        out["early_stopping"] = True
    if "max_len_b" in preset:
        out["max_new_tokens"] = int(preset["max_len_b"]) + 1
    if "min_len" in preset:
        out["min_new_tokens"] = int(preset["min_len"])
    if "no_repeat_ngram_size" in preset:
        out["no_repeat_ngram_size"] = int(preset["no_repeat_ngram_size"])
    return out


def from_hf(hf_dir: Path, out_dir: Path, user_dir: Path, head: str | None = None) -> Path:
    """A transformers BART/mBART folder -> ``out_dir/checkpoint.pt`` + ``dict.txt``, ``encoder.json``, ``vocab.bpe``.

    A ``*ForSequenceClassification`` folder becomes a ``--task sentence_prediction`` checkpoint with its
    head as ``classification_heads.HEAD`` (``head``, default fairseq's ``sentence_classification_head``),
    ``input0/dict.txt`` and ``label/dict.txt`` (its labels in id order) beside it, and the task's
    ``init_token`` / ``separator_token`` set to join a pair as the folder's tokenizer does."""
    hf_dir = Path(hf_dir)
    source = str(hf_dir / "config.json")
    config = hf.read_config(hf_dir)
    shape = hf.shape_from_hf_config(config, source)
    weights = hf.read_hf_weights(hf_dir)
    classifier = hf.split_hf_classifier(weights, config, str(hf_dir))
    if head is not None and classifier is None:
        raise ConversionError(f"{hf_dir}: --head {head!r} given, but the folder's weights have no classification_head")
    rows = hf.dictionary_rows(weights, str(hf_dir))
    if classifier is not None:  # to-hf's rows for GPT-2 tokens outside the dictionary, without the bias that marks them
        rows = hf.classifier_dictionary_rows(weights, rows, vocab.read_bpe_files(hf_dir)[0].get(vocab.MASK))
    out_dir = Path(out_dir)
    with staged(out_dir) as tmp:
        has_mask = vocab.import_vocab(hf_dir, rows, tmp)
        shape.vocab_size = rows
        state = hf.state_from_hf(weights, shape, str(hf_dir))
        if not has_mask:  # bart.large.cnn-like: our tasks append <mask>; a zero row keeps every other logit
            logger.warning("%s has no <mask> row: appended one of zeros (bart_ext's tasks add <mask> last)", hf_dir)
            for key in hf.expected_keys(shape):
                if key.endswith(("embed_tokens.weight", "output_projection.weight")):
                    w = state[key]
                    state[key] = torch.cat([w, w.new_zeros(1, w.size(1))])
            shape.vocab_size = rows + 1
        shared = state["encoder.embed_tokens.weight"]
        for key in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):
            state[key] = shared
        task = _import_classifier(classifier, head, hf_dir, state, tmp) if classifier is not None else None
        from bart_ext.convert.fairseq_checkpoint import write_checkpoint

        write_checkpoint(tmp / "checkpoint.pt", state, shape, out_dir.resolve(), user_dir,
                         imported_from=str(hf_dir.resolve()), leading_space=vocab.tokenizer_adds_prefix_space(hf_dir),
                         task=task)
    logger.info("from-hf: %s (%s, %d rows%s) -> %s", hf_dir, "Post-LN" if shape.post_ln else "Pre-LN",
                shape.vocab_size, "" if task is None else "; " + " ".join(task), out_dir / "checkpoint.pt")
    return out_dir / "checkpoint.pt"


def _import_classifier(classifier: hf.HfClassifier, head: str | None, hf_dir: Path, state: dict,
                       tmp: Path) -> list[str]:
    """Put ``classifier``'s head into ``state`` as ``classification_heads.HEAD``, write ``input0/dict.txt``
    and ``label/dict.txt`` into ``tmp``; returns the ``sentence_prediction`` options of the checkpoint."""
    name = head or "sentence_classification_head"  # fairseq's --classification-head-name default
    for key, value in classifier.state.items():
        state[f"classification_heads.{name}.{key}"] = value
    init, separator = vocab.classifier_layout(hf_dir, vocab.read_bpe_files(hf_dir)[0])
    task = ["--task", "sentence_prediction", "--criterion", "sentence_prediction", "--num-classes",
            str(classifier.num_classes), "--add-prev-output-tokens",
            "--classification-head-name", name, "--pooler-dropout", str(classifier.dropout)]
    task += ["--init-token", str(init)] if init is not None else []
    task += ["--separator-token", str(separator)] if separator is not None else []
    (tmp / "input0").mkdir()
    shutil.copyfile(tmp / "dict.txt", tmp / "input0" / "dict.txt")
    if classifier.labels is None:
        return task + ["--regression-target"]
    (tmp / "label").mkdir()
    (tmp / "label" / "dict.txt").write_text("".join(f"{label} 1\n" for label in classifier.labels), encoding="utf-8")
    return task


def load_fairseq_checkpoint(path: Path) -> tuple[dict, object]:
    """(model state, model config) of a bart_ext checkpoint, read through fairseq's (patched) loader."""
    from fairseq import checkpoint_utils

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: checkpoint not found")
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    cfg = state["cfg"]
    name = cfg.model._name if cfg.model is not None else None
    name = str(name) if name is not None else ""
    if not (name == "bart_preln" or (name.startswith("bart_") and name.endswith("_preln"))):
        raise ConversionError(f"{path}: model {name!r} is not one of bart_ext's bart_*_preln architectures")
    if name == "bart_preln":
        # `--arch bart_preln` fills what was not typed (dropout, positions, ...) from the large preset when
        # the model is built, on a copy: the checkpoint's config still holds None there.
        from bart_ext.adapters import import_plugin

        import_plugin()
        from fairseq.models import ARCH_CONFIG_REGISTRY
        from omegaconf import open_dict
        with open_dict(cfg.model):
            ARCH_CONFIG_REGISTRY["bart_large_preln"](cfg.model)
    return state, cfg


def _dictionary_of(data: Path) -> Path:
    for name in ("dict.txt", "dict.source.txt", "input0/dict.txt"):  # denoising, summarization, sentence_prediction
        if (data / name).is_file():
            return data / name
    raise ConversionError(f"{data}: no dict.txt (or dict.source.txt, input0/dict.txt): pass --data, the folder "
                          "the model trained on")


def _split_head(model_state: dict, head: str | None, cfg, checkpoint: Path, data: Path) -> tuple[dict | None, dict]:
    """Take the classification head to export (``head``, or the checkpoint's only one) out of
    ``model_state``; returns its weights (None for a model without heads) and its config fields."""
    root = "classification_heads."
    heads = sorted({k[len(root):].split(".")[0] for k in model_state if k.startswith(root)})
    if head is not None and head not in heads:
        raise ConversionError(f"{checkpoint}: no classification head {head!r} (it has: {', '.join(heads) or 'none'})")
    if head is None and len(heads) > 1:
        raise ConversionError(f"{checkpoint}: {len(heads)} classification heads ({', '.join(heads)}): pass --head")
    name = head or (heads[0] if heads else None)
    head_state = {k[len(root) + len(name) + 1:]: v for k, v in model_state.items() if k.startswith(f"{root}{name}.")} \
        if name else None
    for k in [k for k in model_state if k.startswith(root)]:
        del model_state[k]
    if head_state is None:
        return None, {}
    activation = getattr(cfg.model, "pooler_activation_fn", None) or "tanh"
    if activation != "tanh":
        raise ConversionError(f"{checkpoint}: pooler_activation_fn is {activation!r}; transformers' classification "
                              "heads apply tanh")
    num_labels = head_state["out_proj.weight"].size(0)
    if head_state["dense.weight"].size(0) != head_state["dense.weight"].size(1):
        raise ConversionError(f"{checkpoint}: head {name!r} has inner_dim {head_state['dense.weight'].size(0)}; "
                              f"transformers' classification heads are d_model ({head_state['dense.weight'].size(1)}) wide")
    fields = {"num_labels": num_labels, "classifier_dropout": float(getattr(cfg.model, "pooler_dropout", 0.0) or 0.0)}
    label_dict = data / "label" / "dict.txt"
    if label_dict.is_file() and num_labels > 1:
        labels = vocab.read_dictionary(label_dict)[4:4 + num_labels]  # after fairseq's 4 specials
        fields["id2label"] = dict(enumerate(labels))
        fields["label2id"] = {label: i for i, label in enumerate(labels)}
    return head_state, fields


def to_hf(checkpoint: Path, out_dir: Path, data: Path | None = None, encoder_json: Path | None = None,
          vocab_bpe: Path | None = None, preset: dict | None = None, head: str | None = None,
          prefix_space: bool | None = None) -> Path:
    """A bart_ext checkpoint -> a transformers folder (model, generation config, tokenizer); a model
    fine-tuned with a classification head -> ``*ForSequenceClassification`` with that head. The tokenizer
    cuts at the length fine-tuning cut sources to (``truncation=True``) and adds the leading space the
    model was trained with (``text_has_leading_space``)."""
    state, cfg = load_fairseq_checkpoint(checkpoint)
    add_prefix_space = text_has_leading_space(state, prefix_space)
    data = Path(data) if data else Path(str(cfg.task.data).split(":")[0])
    dict_path = _dictionary_of(data)
    symbols = vocab.read_dictionary(dict_path) + [vocab.MASK]  # our tasks append <mask>
    model_state = dict(state["model"])
    from bart_ext.convert.fairseq_layouts import upgrade_released_bart

    upgrade_released_bart(model_state, "", None)
    head_state, classifier = _split_head(model_state, head, cfg, checkpoint, data)
    rows = model_state["encoder.embed_tokens.weight"].size(0)
    if rows != len(symbols):
        raise ConversionError(f"{checkpoint}: {rows} embedding rows, but {dict_path} with <mask> has {len(symbols)} "
                              "entries: pass --data with the dictionary the model trained on")
    shape = ModelShape.from_fairseq(cfg.model, rows)
    hf.check_keys(model_state, hf.expected_keys(shape), str(checkpoint))
    encoder_json = Path(encoder_json) if encoder_json else data / "encoder.json"
    vocab_bpe = Path(vocab_bpe) if vocab_bpe else data / "vocab.bpe"
    with staged(out_dir) as tmp:
        extra = vocab.export_vocab(symbols, encoder_json, vocab_bpe, tmp)
        vocab.save_hf_tokenizer(tmp, source_length_limit(cfg.task, shape.max_positions), add_prefix_space)
        if head_state is not None:
            template = vocab.set_classifier_template(tmp, symbols, getattr(cfg.task, "init_token", 0),
                                                     getattr(cfg.task, "separator_token", None))
            logger.info("to-hf: the tokenizer joins a pair as %s, as sentence_prediction fed it", template)
        hf_state = hf.state_to_hf(model_state, shape, extra)
        if head_state is not None:
            hf_state = hf.classifier_to_hf(hf_state, head_state)
        hf.save_hf_model(tmp, shape, hf_state, hf_generation_config(preset), classifier or None)
    kind = "ForSequenceClassification" if head_state is not None else "ForConditionalGeneration"
    logger.info("to-hf: %s -> %s (%s; %d dictionary rows, %d GPT-2 tokens outside it; tokenizer: "
                "add_prefix_space %s)", checkpoint, out_dir, ("Bart" if shape.post_ln else "MBart") + kind, rows,
                extra, add_prefix_space)
    return Path(out_dir)


def to_ct2(checkpoint: Path, out_dir: Path, quantization: str | None = None, **to_hf_kwargs) -> Path:
    """A bart_ext checkpoint -> a CTranslate2 folder (through a transformers export)."""
    from bart_ext.convert.ct2 import convert_hf_folder

    with tempfile.TemporaryDirectory() as hf_dir, staged(out_dir) as tmp:
        to_hf(checkpoint, Path(hf_dir) / "hf", **to_hf_kwargs)
        kinds = json.loads((Path(hf_dir) / "hf" / "config.json").read_text(encoding="utf-8")).get("architectures") or []
        if any(k.endswith("ForSequenceClassification") for k in kinds):  # CTranslate2 would drop the head
            raise ConversionError(f"{checkpoint}: a classifier ({kinds[0]}); CTranslate2 converts BART only as a "
                                  "sequence-to-sequence generator, without the classification head: use to-hf")
        convert_hf_folder(Path(hf_dir) / "hf", tmp / "ct2", quantization)
        for f in (tmp / "ct2").iterdir():
            f.replace(tmp / f.name)
        (tmp / "ct2").rmdir()
    return Path(out_dir)
