"""bart_ext/positions.py: position rows pretraining never reached, filled from the trained ones."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bart_ext import model as core
from bart_ext.positions import PositionFillError, fill_checkpoint_positions, fill_untrained_positions

ROOT = Path(__file__).resolve().parents[2]
TRAINED = 6
FIRST = 2  # position 0 is row padding_idx + 1


def tiny_model(seed: int = 0) -> core.BartModel:
    torch.manual_seed(seed)
    return core.BartModel(core.BartConfig(vocab_size=40, embed_dim=12, ffn_dim=14, encoder_layers=1, decoder_layers=1,
                                          attention_heads=3, max_positions=14, dropout=0.0))


@pytest.mark.parametrize("fill", ["tail-mean", "mean", "tile"])
def test_fills_only_rows_beyond_the_trained_positions(fill):
    state = {k: v.clone() for k, v in tiny_model().state_dict().items()}
    before = {k: v.clone() for k, v in state.items()}
    changed = fill_untrained_positions(state, TRAINED, fill)
    keys = ["encoder.embed_positions.weight", "decoder.embed_positions.weight"]
    assert changed == keys
    for key in keys:
        old, new = before[key], state[key]
        assert torch.equal(new[:FIRST + TRAINED], old[:FIRST + TRAINED])  # padding row and trained rows kept
        for row in range(FIRST + TRAINED, old.size(0)):
            p = row - FIRST
            if fill == "tile":
                want = old[FIRST + p % TRAINED]
            else:
                lo = TRAINED // 2 if fill == "tail-mean" else 0
                want = sum(old[FIRST + q] for q in range(lo, TRAINED)) / (TRAINED - lo)
            torch.testing.assert_close(new[row], want)
        assert not torch.equal(new, old)
    assert all(torch.equal(state[k], before[k]) for k in state if k not in keys)


def test_a_table_no_longer_than_the_trained_positions_is_left_alone():
    state = tiny_model().state_dict()
    before = state["encoder.embed_positions.weight"].clone()
    assert fill_untrained_positions(state, 14, "tail-mean") == []
    assert torch.equal(state["encoder.embed_positions.weight"], before)


@pytest.mark.parametrize("kwargs, message", [({"trained": 6, "fill": "zeros"}, "fill 'zeros'"),
                                             ({"trained": 1, "fill": "mean"}, "trained=1")])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(PositionFillError, match=message):
        fill_untrained_positions(tiny_model().state_dict(), **kwargs)


def test_a_state_without_position_tables_is_refused():
    with pytest.raises(PositionFillError, match="encoder.embed_positions.weight"):
        fill_untrained_positions({"encoder.embed_tokens.weight": torch.zeros(3, 2)}, 6)


def write_checkpoint(path: Path, data: Path, seed: int = 0) -> Path:
    """A bart_ext checkpoint (fairseq's layout and config) of a 12-wide model on the prepared data."""
    from bart_ext.convert.fairseq_checkpoint import write_checkpoint as write
    from bart_ext.convert.hf import ModelShape
    from bart_ext.convert.vocab import read_dictionary

    n = len(read_dictionary(data / "dict.txt")) + 1  # + <mask>
    torch.manual_seed(seed)
    model = core.BartModel(core.BartConfig(vocab_size=n, embed_dim=12, ffn_dim=14, encoder_layers=2, decoder_layers=1,
                                           attention_heads=3, max_positions=64, dropout=0.0))
    shape = ModelShape(vocab_size=n, embed_dim=12, ffn_dim=14, encoder_layers=2, decoder_layers=1, attention_heads=3,
                       max_positions=64, post_ln=False, dropout=0.0)
    write(path, model.state_dict(), shape, data.resolve(), ROOT / "user_dir")
    return path


def load(checkpoint: Path, data: Path):
    from fairseq import checkpoint_utils

    import user_dir  # noqa: F401

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides={"data": str(data)})
    return models[0].eval()


def test_filled_checkpoint_loads_and_is_unchanged_within_the_trained_length(tmp_path, data_dir):
    """fairseq loads the copy; a batch no longer than the trained length gives the same output as before,
    a longer one does not, and every position past the trained ones embeds as the tail mean."""
    data = data_dir / "bin"
    ckpt = write_checkpoint(tmp_path / "pre.pt", data)
    info = fill_checkpoint_positions(ckpt, tmp_path / "filled.pt", trained=16)
    assert info == {"trained": 16, "fill": "tail-mean",
                    "changed": ["encoder.embed_positions.weight", "decoder.embed_positions.weight"]}
    old, new = load(ckpt, data), load(tmp_path / "filled.pt", data)
    torch.manual_seed(1)
    for length, same in ((16, True), (30, False)):
        src = torch.randint(4, 100, (3, length))
        src[:, -1] = 2
        prev = torch.roll(src, 1, 1)
        with torch.no_grad():
            a = old(src, torch.full((3,), length), prev)[0]
            b = new(src, torch.full((3,), length), prev)[0]
        assert torch.equal(a, b) is same
    table = new.encoder.embed_positions.weight
    torch.testing.assert_close(table[FIRST + 16:], table[FIRST + 8:FIRST + 16].mean(0).expand(64 - 16, -1))


def test_default_trained_length_is_the_pretraining_samples_and_errors_name_the_file(tmp_path, data_dir):
    data = data_dir / "bin"
    ckpt = write_checkpoint(tmp_path / "pre.pt", data)
    state = torch.load(ckpt, weights_only=False)
    state["cfg"]["task"]["tokens_per_sample"] = 20
    torch.save(state, ckpt)
    assert fill_checkpoint_positions(ckpt, tmp_path / "filled.pt")["trained"] == 20
    with pytest.raises(PositionFillError, match="missing.pt: checkpoint not found"):
        fill_checkpoint_positions(tmp_path / "missing.pt", tmp_path / "x.pt")
    with pytest.raises(PositionFillError, match="overwrite its input"):
        fill_checkpoint_positions(ckpt, ckpt)
    assert not (tmp_path / "x.pt").exists()


def test_cli(tmp_path, data_dir):
    sys.path.insert(0, str(ROOT))
    from scripts.fill_positions import main

    ckpt = write_checkpoint(tmp_path / "pre.pt", data_dir / "bin")
    info = main([str(ckpt), str(tmp_path / "tiled.pt"), "--trained", "10", "--fill", "tile"])
    table = torch.load(tmp_path / "tiled.pt", weights_only=False)["model"]["decoder.embed_positions.weight"]
    assert info["fill"] == "tile" and torch.equal(table[FIRST + 10], table[FIRST])
    with pytest.raises(SystemExit, match="fill_positions.py: .*trained=1"):
        main([str(ckpt), str(tmp_path / "bad.pt"), "--trained", "1"])
