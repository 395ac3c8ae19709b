"""The copy task learns where copying is easy, and does not where it is not (the demo's diagnostic)."""
from __future__ import annotations

import torch

from bart_ext.copy_task import CopySetup, copy_batch, run_copy_task, shift_right


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
