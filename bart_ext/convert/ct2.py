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
