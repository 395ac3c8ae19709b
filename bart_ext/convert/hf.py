"""transformers BART / mBART folders <-> fairseq BART state dicts (torch and safetensors only).

transformers' ``MBartForConditionalGeneration`` is our Pre-LN layout (a LayerNorm before every
sublayer, ``encoder.layer_norm`` / ``decoder.layer_norm`` after the last layer,
``layernorm_embedding`` after positions are added, learned positions with offset 2, GeLU, no
embedding scale when ``scale_embedding`` is false); ``BartForConditionalGeneration`` is the Post-LN
layout (``--post-ln``). Parameter names below ``model.`` are fairseq's, so the mapping is a prefix,
plus the one shared embedding (``model.shared``, both ``embed_tokens``, ``lm_head``, fairseq's
``output_projection``).

Rows beyond the model's dictionary. A model trained on a corpus dictionary smaller than GPT-2's
maps every GPT-2 token outside it to ``<unk>`` in fairseq. A byte-level BPE tokenizer cannot say
that (the ``tokenizers`` BPE keys merges by token id, so many tokens cannot share the id of
``<unk>``), so ``to_hf`` gives each such token an id of its own after the dictionary, an embedding
row equal to ``<unk>``'s (the same input) and ``-inf`` in ``final_logits_bias`` (never predicted, and
the softmax over the dictionary unchanged). ``from_hf`` recognises and drops those rows; any other
``final_logits_bias`` is refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


class ConversionError(ValueError):
    """A model or tokenizer we cannot convert; the message names the file and the field."""


@dataclass
class ModelShape:
    """What a converted model needs from its fairseq model config (``BartPrelnConfig``'s fields).

    ``vocab_size`` counts the model's dictionary rows (``<mask>`` included), not rows added for
    tokens outside it.
    """

    vocab_size: int
    embed_dim: int
    ffn_dim: int
    encoder_layers: int
    decoder_layers: int
    attention_heads: int
    max_positions: int
    post_ln: bool
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0

    def fairseq_fields(self) -> dict:
        """The model config fields of ``--arch bart_*_preln`` that give this shape."""
        return {
            "encoder_embed_dim": self.embed_dim, "encoder_ffn_embed_dim": self.ffn_dim,
            "encoder_layers": self.encoder_layers, "decoder_layers": self.decoder_layers,
            "encoder_attention_heads": self.attention_heads, "max_positions": self.max_positions,
            "dropout": self.dropout, "attention_dropout": self.attention_dropout,
            "activation_dropout": self.activation_dropout, "post_ln": self.post_ln,
        }

    @classmethod
    def from_fairseq(cls, model_cfg, vocab_size: int) -> ModelShape:
        return cls(vocab_size=vocab_size, embed_dim=model_cfg.encoder_embed_dim,
                   ffn_dim=model_cfg.encoder_ffn_embed_dim, encoder_layers=model_cfg.encoder_layers,
                   decoder_layers=model_cfg.decoder_layers, attention_heads=model_cfg.encoder_attention_heads,
                   max_positions=model_cfg.max_positions, post_ln=bool(model_cfg.post_ln),
                   dropout=model_cfg.dropout, attention_dropout=model_cfg.attention_dropout,
                   activation_dropout=model_cfg.activation_dropout)


# (field, the value we can represent) for configs we read: anything else is refused by name.
_REQUIRED = (
    ("scale_embedding", False),
    ("activation_function", "gelu"),
    ("tie_word_embeddings", True),
    ("pad_token_id", 1),
    ("bos_token_id", 0),
    ("eos_token_id", 2),
)


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{path}: not found (a transformers model folder has config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not JSON ({e})") from None


def shape_from_hf_config(config: dict, source: str) -> ModelShape:
    """The shape of a transformers BART/mBART ``config.json``; refuses what bart_ext cannot represent.

    Args:
        config: the parsed ``config.json``.
        source: its path, for error messages.
    """
    kind = config.get("model_type")
    if kind not in ("bart", "mbart"):
        raise ConversionError(f"{source}: model_type is {kind!r}; only 'bart' (Post-LN) and 'mbart' (Pre-LN "
                              "layout) convert")
    for field, want in _REQUIRED:
        have = config.get(field, want)
        if have != want:
            raise ConversionError(f"{source}: {field} is {have!r}; bart_ext represents only {want!r}")
    pre_ln = kind == "mbart"
    if "normalize_before" in config and bool(config["normalize_before"]) != pre_ln:
        raise ConversionError(f"{source}: normalize_before is {config['normalize_before']!r} but model_type "
                              f"{kind!r} is {'Pre' if pre_ln else 'Post'}-LN in transformers")
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if config.get(enc) != config.get(dec):
            raise ConversionError(f"{source}: {enc} ({config.get(enc)}) and {dec} ({config.get(dec)}) differ; "
                                  "bart_ext's encoder and decoder have one width and one head count")
    for field in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                  "encoder_ffn_dim", "max_position_embeddings"):
        if not isinstance(config.get(field), int):
            raise ConversionError(f"{source}: {field} is {config.get(field)!r}; an integer is needed")
    return ModelShape(
        vocab_size=config["vocab_size"], embed_dim=config["d_model"], ffn_dim=config["encoder_ffn_dim"],
        encoder_layers=config["encoder_layers"], decoder_layers=config["decoder_layers"],
        attention_heads=config["encoder_attention_heads"], max_positions=config["max_position_embeddings"],
        post_ln=not pre_ln, dropout=float(config.get("dropout", 0.1)),
        attention_dropout=float(config.get("attention_dropout", 0.0)),
        activation_dropout=float(config.get("activation_dropout", 0.0)),
    )


def hf_config_fields(shape: ModelShape, rows: int) -> dict:
    """``config.json`` fields of the transformers model for ``shape`` with ``rows`` embedding rows.

    ``normalize_before`` is not a transformers field: CTranslate2's BART/mBART converter reads it.
    """
    return {
        "vocab_size": rows, "d_model": shape.embed_dim, "encoder_layers": shape.encoder_layers,
        "decoder_layers": shape.decoder_layers, "encoder_attention_heads": shape.attention_heads,
        "decoder_attention_heads": shape.attention_heads, "encoder_ffn_dim": shape.ffn_dim,
        "decoder_ffn_dim": shape.ffn_dim, "max_position_embeddings": shape.max_positions,
        "activation_function": "gelu", "scale_embedding": False, "tie_word_embeddings": True,
        "dropout": shape.dropout, "attention_dropout": shape.attention_dropout,
        "activation_dropout": shape.activation_dropout, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "decoder_start_token_id": 2, "forced_eos_token_id": 2, "normalize_before": not shape.post_ln,
    }


def read_hf_weights(folder: Path) -> dict[str, Tensor]:
    """``model.safetensors`` (or a sharded index of them), else ``pytorch_model.bin`` (weights only)."""
    folder = Path(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file() or index.is_file():
        from safetensors.torch import load_file

        if single.is_file():
            return load_file(str(single))
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        out: dict[str, Tensor] = {}
        for shard in shards:
            out.update(load_file(str(folder / shard)))
        return out
    legacy = folder / "pytorch_model.bin"
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise ConversionError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _shared_embedding(hf: dict[str, Tensor], source: str) -> Tensor:
    for key in ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                "lm_head.weight"):
        if key in hf:
            shared = hf[key]
            break
    else:
        raise ConversionError(f"{source}: no token embedding (model.shared.weight)")
    for key in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        if key in hf and not torch.equal(hf[key], shared):
            raise ConversionError(f"{source}: {key} differs from model.shared.weight; bart_ext ties the input and "
                                  "output embeddings of encoder and decoder")
    return shared


def dictionary_rows(hf: dict[str, Tensor], source: str, unk: int = 3) -> int:
    """How many embedding rows are the model's dictionary: rows after it, added by ``to_hf`` for tokens
    outside it, carry ``-inf`` in ``final_logits_bias`` and ``<unk>``'s embedding."""
    shared = _shared_embedding(hf, source)
    rows = shared.size(0)
    bias = hf.get("final_logits_bias")
    if bias is None:
        return rows
    bias = bias.reshape(-1)
    if bias.numel() != rows:
        raise ConversionError(f"{source}: final_logits_bias has {bias.numel()} entries for {rows} embedding rows")
    neg = torch.isneginf(bias)
    n = rows
    while n > 0 and neg[n - 1]:
        n -= 1
    if bias[:n].count_nonzero() or neg[:n].any():
        first = int(torch.nonzero(bias[:n]).reshape(-1)[0])
        raise ConversionError(f"{source}: final_logits_bias is non-zero (entry {first}: {float(bias[first])}); "
                              "bart_ext's output layer has no bias")
    if n < rows and not torch.equal(shared[n:], shared[unk].expand(rows - n, -1)):
        raise ConversionError(f"{source}: rows {n}..{rows - 1} have -inf in final_logits_bias but are not copies "
                              "of <unk>'s embedding: not rows bart_ext added, and not representable")
    return n


def state_from_hf(hf: dict[str, Tensor], shape: ModelShape, source: str) -> dict[str, Tensor]:
    """A fairseq BART state dict (our model's keys) from a transformers state dict."""
    shared = _shared_embedding(hf, source)[: shape.vocab_size].clone()
    state: dict[str, Tensor] = {
        "encoder.embed_tokens.weight": shared,
        "decoder.embed_tokens.weight": shared,
        "decoder.output_projection.weight": shared,
    }
    for key, value in hf.items():
        for side in ("encoder", "decoder"):
            prefix = f"model.{side}."
            if key.startswith(prefix) and not key.endswith("embed_tokens.weight"):
                state[side + "." + key[len(prefix):]] = value
    unknown = [k for k in hf if not k.startswith(("model.encoder.", "model.decoder.")) and k not in (
        "model.shared.weight", "lm_head.weight", "final_logits_bias")]
    if unknown:
        raise ConversionError(f"{source}: weights bart_ext has no place for: {', '.join(sorted(unknown)[:5])}"
                              + (" ..." if len(unknown) > 5 else ""))
    check_keys(state, expected_keys(shape), source)
    return state


def state_to_hf(state: dict[str, Tensor], shape: ModelShape, extra_rows: int = 0, unk: int = 3) -> dict[str, Tensor]:
    """A transformers state dict from our model's; ``extra_rows`` copies of ``<unk>``'s row are appended
    with ``-inf`` logit bias (tokens outside the dictionary, see the module docstring)."""
    shared = state["encoder.embed_tokens.weight"]
    if extra_rows:
        shared = torch.cat([shared, shared[unk].expand(extra_rows, -1)])
    bias = torch.zeros(1, shared.size(0), dtype=shared.dtype)
    bias[0, shape.vocab_size:] = float("-inf")
    hf: dict[str, Tensor] = {"model.shared.weight": shared, "model.encoder.embed_tokens.weight": shared,
                             "model.decoder.embed_tokens.weight": shared, "lm_head.weight": shared,
                             "final_logits_bias": bias}
    for key, value in state.items():
        if key.endswith(("embed_tokens.weight", "output_projection.weight", ".version")):
            continue
        hf["model." + key] = value
    return hf


def expected_keys(shape: ModelShape) -> set[str]:
    """The state-dict keys of our model with ``shape`` (fairseq BART's names)."""
    keys = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight"}
    norms = ["layernorm_embedding"] + ([] if shape.post_ln else ["layer_norm"])
    sub = {"encoder": ["self_attn", "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"],
           "decoder": ["self_attn", "self_attn_layer_norm", "encoder_attn", "encoder_attn_layer_norm", "fc1", "fc2",
                       "final_layer_norm"]}
    for side, layers in (("encoder", shape.encoder_layers), ("decoder", shape.decoder_layers)):
        keys.add(f"{side}.embed_positions.weight")
        keys.update(f"{side}.{n}.{p}" for n in norms for p in ("weight", "bias"))
        for i in range(layers):
            for name in sub[side]:
                projs = ["k_proj", "v_proj", "q_proj", "out_proj"] if name.endswith("attn") else [None]
                for proj in projs:
                    base = f"{side}.layers.{i}.{name}" + (f".{proj}" if proj else "")
                    keys.update((base + ".weight", base + ".bias"))
    return keys


def check_keys(state: dict[str, Tensor], expected: set[str], source: str) -> None:
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "")] if missing else []) + (
            [f"unexpected {', '.join(extra[:4])}" + (" ..." if len(extra) > 4 else "")] if extra else [])
        raise ConversionError(f"{source}: the weights do not match the config's layout: {'; '.join(parts)}")


def classifier_to_hf(hf_state: dict[str, Tensor], head_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_to_hf``'s output turned into a ``*ForSequenceClassification`` state: no output layer,
    and the head's ``dense`` / ``out_proj`` (fairseq's names) as ``classification_head.*``."""
    out = {k: v for k, v in hf_state.items() if k not in ("lm_head.weight", "final_logits_bias")}
    for key, value in head_state.items():
        out["classification_head." + key] = value
    return out


@dataclass
class HfClassifier:
    """A ``*ForSequenceClassification`` folder's head: its weights under fairseq's names (``dense.*``,
    ``out_proj.*``), its labels in id order (none for a regression head), and its dropout."""

    state: dict[str, Tensor]
    labels: list[str] | None
    dropout: float

    @property
    def num_classes(self) -> int:
        return self.state["out_proj.weight"].size(0)


def split_hf_classifier(hf: dict[str, Tensor], config: dict, source: str) -> HfClassifier | None:
    """Take ``classification_head.*`` out of ``hf`` (a transformers BART/mBART classifier's state);
    None where there is none. A head that ``sentence_prediction`` cannot train is refused by field."""
    root = "classification_head."
    head = {k[len(root):]: hf.pop(k) for k in [k for k in hf if k.startswith(root)]}
    if not head:
        return None
    want = {"dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias"}
    if set(head) != want:
        raise ConversionError(f"{source}: classification_head has {sorted(head)}; transformers' BART heads have "
                              f"{sorted(want)}")
    problem = config.get("problem_type")
    if problem not in (None, "single_label_classification", "regression"):
        raise ConversionError(f"{source}: problem_type is {problem!r}; fairseq's sentence_prediction trains "
                              "single-label classification and regression")
    num = head["out_proj.weight"].size(0)
    labels = None
    if num > 1 and problem != "regression":
        names = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
        labels = [names.get(i, f"LABEL_{i}") for i in range(num)]
        bad = [x for x in labels if not x.strip() or any(c.isspace() for c in x)]
        if bad or len(set(labels)) != num:
            raise ConversionError(f"{source}: id2label {names}: fairseq's label dictionary needs {num} distinct "
                                  "labels without spaces")
    dropout = config.get("classifier_dropout")
    return HfClassifier(head, labels, float(dropout) if dropout is not None else 0.0)


def classifier_dictionary_rows(hf: dict[str, Tensor], rows: int, mask: int | None, unk: int = 3) -> int:
    """The dictionary rows of a classifier, whose folder has no ``final_logits_bias`` to mark the rows
    ``to_hf`` added after ``<mask>`` (copies of ``<unk>``'s embedding): those rows are left out."""
    if mask is None or mask >= rows - 1:
        return rows
    shared = _shared_embedding(hf, "")
    return mask + 1 if torch.equal(shared[mask + 1: rows], shared[unk].expand(rows - mask - 1, -1)) else rows


def save_hf_model(out_dir: Path, shape: ModelShape, hf_state: dict[str, Tensor], generation: dict,
                  classifier: dict | None = None) -> None:
    """Write ``config.json``, ``generation_config.json`` and ``model.safetensors`` through transformers'
    own classes (mBART for Pre-LN, BART for Post-LN), so that ``from_pretrained`` reads them.

    Args:
        classifier: for a model with a classification head, ``config.json`` fields of
            ``*ForSequenceClassification`` (``num_labels``, ``id2label``, ``classifier_dropout``);
            ``hf_state`` then comes from ``classifier_to_hf``.
    """
    import transformers
    from transformers import GenerationConfig

    family = "Bart" if shape.post_ln else "MBart"
    kind = "ForSequenceClassification" if classifier else "ForConditionalGeneration"
    config_cls, model_cls = getattr(transformers, family + "Config"), getattr(transformers, family + kind)
    rows = hf_state["model.shared.weight"].size(0)
    config = config_cls(**hf_config_fields(shape, rows), **(classifier or {}))
    with torch.device("meta"):
        model = model_cls(config)
    missing, unexpected = model.load_state_dict(hf_state, strict=False, assign=True)
    missing = [k for k in missing if k not in ("lm_head.weight",)]
    if missing or unexpected:
        raise ConversionError(f"transformers' {model_cls.__name__} does not take these weights: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}")
    model.tie_weights()
    if not classifier:
        model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(str(out_dir))
