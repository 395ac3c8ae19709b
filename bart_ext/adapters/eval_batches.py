"""Every evaluation sentence gets a batch.

fairseq's ``data_utils.batch_by_size`` drops a last batch whose size is not a multiple of
``--required-batch-size-multiple`` (fairseq's default: 8; fairseq issues #5036 and #5351). Through
``fairseq-generate`` that leaves up to 7 documents out of the output without a word, for example 4 of
100 test papers at ``--batch-size 32``, and validation scores the rest. Our tasks therefore batch
every split but the training one with a multiple of 1. The training split keeps fairseq's rule, so
its batches stay those of stock fairseq.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def batch_multiple(task, dataset, multiple: int) -> int:
    """The ``required_batch_size_multiple`` to batch ``dataset`` with: ``multiple`` for the task's
    training split, else 1 (fairseq would drop a last batch that is not a multiple of it)."""
    if multiple is None or multiple <= 1:
        return multiple
    train = getattr(task, "datasets", {}).get(getattr(task.cfg, "train_subset", "train"))
    if dataset is train:
        return multiple
    if not getattr(task, "_told_batch_multiple", False):
        logger.info("evaluation batches: any size instead of multiples of --required-batch-size-multiple %d, "
                    "which would leave a last batch's sentences out (fairseq #5036)", multiple)
        task._told_batch_multiple = True
    return 1
