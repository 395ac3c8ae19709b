"""fairseq's own ``DenoisingDataset`` over bart_ext's samples: the reference that
tests/unit/test_noising.py checks agreement against and scripts/bench_noise.py and
scripts/bench_lddl.py time ours against. Not part of the library: nothing trains with it.
"""
from __future__ import annotations

import numpy as np
import torch
from fairseq.data import Dictionary

from bart_ext.denoising_data import DenoisingSamples
from bart_ext.noising import NoiseConfig


class _CleanBlocks(torch.utils.data.Dataset):
    """``<s> clean tokens </s>`` of each sample: fairseq's DenoisingDataset input."""

    def __init__(self, samples: DenoisingSamples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        tokens, _ = self.samples.clean(index)
        sp = self.samples.specials
        return torch.from_numpy(np.concatenate([[sp.bos], tokens, [sp.eos]]).astype(np.int64))


def fairseq_reference(samples: DenoisingSamples, dictionary: Dictionary, mask_idx: int, cfg: NoiseConfig,
                      seed: int):
    """fairseq's own ``DenoisingDataset`` over the same samples, word-start table and settings.

    The reference behind the published BART models, for agreement tests and the speed
    benchmark. It finds sentence ends by GPT-2's "." token (its ``bpe='gpt2'`` rule).
    """
    from fairseq.data.denoising_dataset import DenoisingDataset

    return DenoisingDataset(
        _CleanBlocks(samples), samples.sizes, dictionary, mask_idx,
        torch.from_numpy(samples.word_start.astype(np.uint8)), shuffle=False, seed=seed, mask=cfg.mask,
        mask_random=cfg.mask_random, insert=cfg.insert, rotate=cfg.rotate,
        permute_sentences=cfg.permute_sentences, bpe="gpt2", replace_length=cfg.replace_length,
        mask_length="span-poisson", poisson_lambda=cfg.poisson_lambda,
    )
