"""Reconstruction scores of the demo's step 2: masked/unmasked accuracy, the copy baseline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bart_ext.noising import Noised, NoiseConfig, Specials
from bart_ext.reconstruction import copy_predictions, model_predictions, samples_from_sentences, score

SP = Specials(bos=0, eos=2, mask=99, size=100, first_regular=4)


def test_samples_keep_whole_sentences_within_the_length():
    docs = [[np.arange(10, 20), np.arange(20, 25), np.arange(30, 40)], [np.arange(4, 90)], [[]]]
    table = np.ones(100, dtype=bool)
    out = samples_from_sentences(docs, table, NoiseConfig(mask=0.0, permute_sentences=0.0), SP, max_tokens=18)
    assert len(out) == 2  # an empty document gives no sample
    assert out[0].target.tolist() == [0, *range(10, 25), 2]  # the third sentence does not fit
    assert len(out[1].target) == 18  # a first sentence longer than the sample is cut
    assert not out[0].masked.any()


def test_copy_baseline_copies_what_is_left_and_misses_what_is_masked():
    target = np.array([0, 10, 11, 12, 13, 14, 2])
    source = np.array([0, 10, 99, 13, 14, 2])  # 11 12 masked as one span
    masked = np.array([0, 0, 1, 1, 0, 0, 0], dtype=bool)
    s = Noised(source, target, 5, np.array([2]), 0, np.array([0]), masked)
    pred = copy_predictions(s)
    assert pred.tolist() == [-1, 10, 99, -1, -1, 14, 2]  # after 12 (absent) it has no guess
    sc = score([pred], [s])
    assert (sc.masked_accuracy, sc.masked_tokens) == (0.0, 2)
    assert (sc.unmasked_accuracy, sc.unmasked_tokens) == (2 / 3, 3)  # 10 and 14 right, 13 missed
    with pytest.raises(ValueError, match="masked"):
        score([pred], [Noised(source, target, 5, np.array([2]), 0, np.array([0]))])


class _Oracle(torch.nn.Module):
    """Logits that put the mass on the true next token: tests the shift of model_predictions."""

    def __init__(self, target):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.target = torch.as_tensor(target)

    def forward(self, src_tokens, src_lengths, prev_output_tokens):
        assert prev_output_tokens[0, 0] == 2 and torch.equal(prev_output_tokens[0, 1:], self.target[:-1])
        return (torch.nn.functional.one_hot(self.target, 100).float().unsqueeze(0), None)


def test_model_predictions_are_teacher_forced_and_aligned_to_the_target():
    target = np.array([0, 10, 11, 12, 2])
    s = Noised(np.array([0, 99, 2]), target, 3, np.array([3]), 0, np.array([0]), np.array([0, 1, 1, 1, 0], bool))
    pred = model_predictions(_Oracle(target), s, eos=2)
    assert pred.tolist() == target.tolist()
    assert score([pred], [s]).masked_accuracy == 1.0
