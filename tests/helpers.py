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


def sentencepiece_model(text_file, folder, vocab_size: int):
    """A sentencepiece model trained on ``text_file`` (``folder/sp.model``) and ``folder/dict.txt`` holding its
    pieces, as lddl_preprocess.py writes a sentencepiece dictionary; returns the processor."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(input=str(text_file), model_prefix=str(folder / "sp"), vocab_size=vocab_size,
                                   bos_id=-1, eos_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "sp.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
    (folder / "dict.txt").write_text("".join(f"{p} 1\n" for p in pieces), encoding="utf-8")
    return sp


def processes_mentioning(text: str) -> list[str]:
    """The command lines of the running processes (zombies excluded) that mention ``text``: what a
    stopped script may have left running in its run folder."""
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # ended meanwhile
            continue
        if text in cmdline and state != "Z":
            found.append(cmdline.strip())
    return found


def bf16_gemm_mode(monkeypatch, mode: str) -> None:
    """Make bf16 CPU products take PyTorch's path (``"torch"``) or MKL's (``"mkl"``, on any x86 CPU,
    with or without bf16 instructions, where ``auto`` would take it only with them)."""
    from bart_ext import bf16_gemm

    monkeypatch.setenv("BART_EXT_BF16_GEMM", "torch" if mode == "torch" else "auto")
    if mode == "mkl":
        if not bf16_gemm.available():
            import pytest

            pytest.skip("this PyTorch build does not export MKL's cblas_gemm_bf16bf16f32")
        monkeypatch.setattr(bf16_gemm, "_usable", lambda: True)
