"""Converted weights as a fairseq checkpoint of ``--arch bart_*_preln`` (imports fairseq and the plugin).

The checkpoint's config is what ``fairseq-train DATA --user-dir user_dir --task bart_denoising --arch ...``
would have saved, with ``DATA`` the output folder (``dict.txt``, ``encoder.json``, ``vocab.bpe``), so
``load_model_ensemble_and_task([ckpt], arg_overrides={"data": folder})``, ``fairseq-generate --path`` and
``--restore-file`` / ``--finetune-from-model`` read it as one of our own. It holds no optimizer
state and an epoch not begun: training from it starts at update 0.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from bart_ext.convert.hf import ModelShape

PRESETS = {  # (layers, width, ffn, heads) of the named architectures (user_dir/bart_preln.py)
    "bart_large_preln": (12, 12, 1024, 4096, 16),
    "bart_base_preln": (6, 6, 768, 3072, 12),
}


def arch_for(shape: ModelShape) -> str:
    """The named architecture whose preset is ``shape``, else ``bart_preln`` with every field given."""
    key = (shape.encoder_layers, shape.decoder_layers, shape.embed_dim, shape.ffn_dim, shape.attention_heads)
    return next((name for name, preset in PRESETS.items() if preset == key), "bart_preln")


def training_argv(data: Path, shape: ModelShape, user_dir: Path, task: list[str] | None = None) -> list[str]:
    """The ``fairseq-train`` arguments that build a model of ``shape`` on ``data`` (``task``: the task and
    its options, ``bart_denoising`` unless given)."""
    task = task or ["--task", "bart_denoising"]
    argv = [str(data), "--user-dir", str(user_dir), *task, "--arch", arch_for(shape)]
    for name, value in shape.fairseq_fields().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return argv


def write_checkpoint(path: Path, state: dict[str, Tensor], shape: ModelShape, data: Path, user_dir: Path,
                     imported_from: str | None = None, leading_space: bool = False,
                     task: list[str] | None = None) -> None:
    """Save ``state`` (our model's keys) at ``path`` with the config of a ``shape`` model on ``data``;
    ``imported_from`` (the source folder of a converted model) and whether its tokenizer put a space
    before a text's first word (``leading_space``) are kept in ``extra_state`` until the checkpoint is
    trained (``bart_ext.summarization_data.text_has_leading_space``)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, training_argv(data, shape, user_dir, task))
    cfg = convert_namespace_to_omegaconf(args)
    torch.save({
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "args": None,
        "model": state,
        "criterion": {},
        # what fairseq's checkpoint upgrade and trainer read: no optimizer state, update 0, epoch 1 not begun
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "none",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "task_state": {},
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True, "version": 2},
                        "previous_training_time": 0.0,
                        **({"imported_from": imported_from, "text_leading_space": bool(leading_space)}
                           if imported_from else {})},
        "last_optimizer_state": None,
    }, path)
