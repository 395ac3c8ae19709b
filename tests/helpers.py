"""Small builders shared by the unit tests."""
from __future__ import annotations

import argparse
import types

from fairseq.data import Dictionary


def dictionary(n: int = 50) -> Dictionary:
    d = Dictionary()
    for i in range(n):
        d.add_symbol(f"w{i}")
    return d


def fake_task(d: Dictionary):
    return types.SimpleNamespace(source_dictionary=d, target_dictionary=d)


def preln_args(**overrides) -> argparse.Namespace:
    """bart_preln model args at odd, unequal widths (12 wide, 3 heads, FFN 14), dropout 0."""
    args = dict(encoder_layers=2, decoder_layers=2, encoder_embed_dim=12, encoder_ffn_embed_dim=14,
                encoder_attention_heads=3, max_positions=64, dropout=0.0, attention_dropout=0.0,
                activation_dropout=0.0, post_ln=False, init_missing_final_layer_norm=False)
    args.update(overrides)
    return argparse.Namespace(**args)


def denoising_task(data_bin, tokens_per_sample: int = 512, **noise):
    """A bart_denoising task on the prepared data (GPT-2 BPE), noise fields overridable."""
    from user_dir.bart_denoising import BartDenoisingTask

    return BartDenoisingTask.from_data(data_bin, tokens_per_sample, **noise)
