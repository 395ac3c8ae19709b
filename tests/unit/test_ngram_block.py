"""n-gram blocking on the device equals fairseq's loop and copies nothing to the host."""
from __future__ import annotations

import pytest
import torch

import bart_ext.adapters.fairseq_patches  # noqa: F401  (installs the replacement)
from bart_ext.ngram_block import block_repeated_ngrams
from fairseq.ngram_repeat_block import NGramRepeatBlock


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("length", [1, 2, 3, 5, 17])
def test_equals_fairseq_loop(n, length):
    g = torch.Generator().manual_seed(n * 100 + length)
    bsz, beam, vocab = 3, 4, 7  # a small vocabulary, so n-grams repeat
    tokens = torch.randint(0, vocab, (bsz * beam, length), generator=g)
    lprobs = torch.randn(bsz * beam, vocab, generator=g)
    block = NGramRepeatBlock(n, use_extension=False)
    ours = block(tokens, lprobs.clone(), bsz, beam, length - 1)  # step = length - 1, as in SequenceGenerator
    ref = block._fairseq_no_repeat_ngram(tokens, lprobs.clone(), bsz, beam, length - 1)
    assert torch.equal(ours, ref)
    if n == 3 and length == 17:
        assert torch.isinf(ours).any(), "the case should block something"


@pytest.mark.parametrize("n", [2, 3])
def test_generation_buffer(n):
    """SequenceGenerator passes its whole pad-filled buffer: only the generated prefix counts."""
    g = torch.Generator().manual_seed(n)
    hyps, vocab, step, pad = 6, 5, 9, 1
    buffer = torch.full((hyps, 30), pad)
    buffer[:, : step + 1] = torch.randint(2, vocab, (hyps, step + 1), generator=g)
    lprobs = torch.randn(hyps, vocab, generator=g)
    block = NGramRepeatBlock(n, use_extension=False)
    ours = block(buffer, lprobs.clone(), 2, 3, step)
    ref = block._fairseq_no_repeat_ngram(buffer[:, : step + 1], lprobs.clone(), 2, 3, step)
    assert torch.equal(ours, ref) and torch.isinf(ours).any()
    # fairseq's loop as fairseq calls it (the whole buffer) compares padding and blocks nothing: #5206.
    stock = block._fairseq_no_repeat_ngram(buffer, lprobs.clone(), 2, 3, step)
    assert not torch.isinf(stock).any()


def test_no_host_copies(monkeypatch):
    tokens = torch.tensor([[5, 6, 5, 6, 5]])
    lprobs = torch.zeros(1, 9)
    for name in ("cpu", "tolist", "item", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError(name)))
    out = block_repeated_ngrams(tokens, lprobs, 2)
    monkeypatch.undo()
    assert torch.isinf(out[0, 6]) and torch.isinf(out).sum() == 1  # "5 6" was seen: 6 after 5 is blocked


def test_memory_is_linear_in_the_length():
    """640 hypotheses x 1,024 tokens (beam 640 of long CNN-DM outputs): no tensor beyond H x W x n,
    where a windows x windows comparison allocated 670 MB."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bart_ext.ngram_block import block_repeated_ngrams

    largest = []

    class Largest(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor):
                    largest.append(t.numel() * t.element_size())
            return out

    hyps, length, vocab = 640, 1024, 500
    tokens = torch.randint(4, 40, (hyps, length))
    lprobs = torch.zeros(hyps, vocab)
    with Largest():
        block_repeated_ngrams(tokens, lprobs, 3)
    assert max(largest) <= hyps * length * 3 * 8  # the (H, W, n) window view's size at most
    assert torch.isinf(lprobs).any()  # with 36 distinct tokens, repeats are blocked
