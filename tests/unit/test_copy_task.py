"""The copy task learns where copying is easy, and does not where it is not (the demo's diagnostic)."""
from __future__ import annotations

import pytest
import torch

from bart_ext.copy_task import CopySetup, copy_batch, run_copy_task, shift_right
from tests import launcher


def test_copy_batches_are_shaped_like_denoising_samples():
    rows = copy_batch(CopySetup(vocab=30, min_len=3, max_len=6, batch=4), torch.Generator().manual_seed(0))
    prev = shift_right(rows)
    assert (rows[:, 0] == 0).all() and (prev[:, 0] == 2).all() and (prev[:, 1] == 0).all()
    for r, p in zip(rows, prev):
        n = int(r.ne(1).sum())
        assert r[n - 1] == 2 and (r[1 : n - 1] >= 4).all() and torch.equal(p[1:n], r[: n - 1])


def test_small_vocabulary_copy_is_learned_and_untrained_is_not():
    learned = run_copy_task(CopySetup(vocab=100, layers=1, steps=250))
    assert learned.steps_to_95 is not None and learned.curve[-1][2] >= 0.95, learned.curve
    untrained = run_copy_task(CopySetup(vocab=100, layers=1, steps=1), eval_every=1)
    assert untrained.curve[-1][2] < 0.5  # specials only: the check can fail


def test_length_curriculum_grows_to_the_longest_length():
    setup = CopySetup(min_len=4, max_len=20, grow=8, batch=64)
    assert [setup.longest(s) for s in (1, 4, 8, 100)] == [6, 12, 20, 20]
    assert CopySetup(min_len=4, max_len=20).longest(1) == 20  # no curriculum
    gen = torch.Generator().manual_seed(0)
    short = copy_batch(setup, gen, setup.longest(1))
    assert short.ne(1).sum(1).max() <= 6 + 2  # <s> and </s> around at most 6 tokens


def test_width_scaled_init_learns_to_copy_where_bart_init_plateaus():
    # The demo's finding (README, "The demo"): at 128 wide, BART's N(0, 0.02) leaves the model on
    # the unigram plateau (specials right, ~14%), while N(0, width ** -0.5) copies within 200 updates (about 100-130 here).
    scaled = run_copy_task(CopySetup(vocab=2000, dim=128, layers=2, steps=200, init_std=128 ** -0.5))
    assert scaled.steps_to_95 is not None, scaled.curve
    bart = run_copy_task(CopySetup(vocab=2000, dim=128, layers=2, steps=120))
    assert bart.steps_to_95 is None and bart.curve[-1][2] < 0.3, bart.curve


def test_copy_task_optimizers():
    res = run_copy_task(CopySetup(vocab=30, layers=1, dim=32, heads=2, steps=2, optimizer="nvlamb", lr=3e-3),
                        eval_every=1)
    assert [u for u, _, _ in res.curve] == [1, 2]
    with pytest.raises(ValueError, match="adam or nvlamb"):
        run_copy_task(CopySetup(vocab=30, layers=1, dim=32, heads=2, steps=1, optimizer="sgd"))


def test_init_std_sets_every_weight_and_is_checked():
    from bart_ext.model import BartConfig, BartModel

    model = BartModel(BartConfig(vocab_size=500, embed_dim=64, ffn_dim=128, encoder_layers=1, decoder_layers=1,
                                 attention_heads=2, init_std=0.125))
    assert abs(float(model.decoder.layers[0].fc1.weight.std()) - 0.125) < 0.01
    assert abs(float(model.encoder.embed_tokens.weight[2:].std()) - 0.125) < 0.01
    assert abs(float(model.decoder.embed_positions.weight[2:].std()) - 0.125) < 0.01
    assert model.decoder.embed_positions.weight[1].abs().sum() == 0  # the padding position stays zero
    with pytest.raises(ValueError, match="init_std"):
        BartConfig(vocab_size=500, init_std=0.0)


def test_settings_are_checked_before_a_run_and_the_script_says_which():
    """diagnose_copy.py took layers=-1 (a model without layers, trained for 300 updates), stopped on dim=0
    inside torch and on lr=abc with a traceback, and kept only the last of two --vary."""
    import sys

    from tests.conftest import ROOT

    for bad, said in (({"layers": -1}, "layers must be at least 1, got -1"),
                      ({"max_len": 4}, r"max_len \(4\) must be at least min_len \(8\)"),
                      ({"dim": 100, "heads": 3}, r"dim \(100\) must be divisible by heads \(3\)"),
                      ({"lr": 0.0}, "lr must be positive"), ({"zipf": -1.0}, "zipf must be 0"),
                      ({"optimizer": "sgd"}, "optimizer must be adam or nvlamb")):
        with pytest.raises(ValueError, match="^copy task: " + said):
            CopySetup(**bad)
    script = [sys.executable, str(ROOT / "scripts" / "diagnose_copy.py"), "--quiet"]
    for args, said in ((["--set", "lr=abc"], "lr=abc: expected a float"),
                       (["--set", "dim=0"], "copy task: dim must be at least 1, got 0"),
                       (["--set", "post_ln=maybe"], "post_ln=maybe: expected true or false"),
                       (["--vary", "dim"], "--vary 'dim': expected FIELD=V1,V2,..."),
                       (["--vary", "lr=1e-3,3e-3", "--vary", "dim=64,128"], "one --vary at a time")):
        proc = launcher.run(script + args, timeout=300)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert said in proc.stderr.strip().splitlines()[-1], proc.stderr
