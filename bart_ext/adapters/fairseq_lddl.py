"""LDDL shards in fairseq: the dataset handle and an epoch batch iterator with fairseq's interface.

fairseq's own iterator needs every sample's size up front and splits batches
among ranks itself; LDDL data is streamed and each rank reads its own share,
so ``--task bart_denoising`` on a shard folder returns this iterator from
``get_batch_iterator`` instead. Its state (epoch, batches consumed) goes into
fairseq's checkpoints as the stock iterator's does, and a resume recomputes one
chunk (``lddl_data.Epoch``).
"""
from __future__ import annotations

import logging
import math

from fairseq.data import FairseqDataset
from fairseq.data.iterators import CountingIterator, EpochBatchIterating

from bart_ext.lddl_data import ChunkStats, Epoch, LoaderConfig

logger = logging.getLogger(__name__)


class LDDLDataset(FairseqDataset):
    """What ``task.dataset(split)`` returns for a shard folder: the loader settings, no samples in memory.

    Args:
        cfg: the loader settings (its ``batch_size`` is set by ``get_batch_iterator``).
        folder: the shard folder (for messages).
        shuffle: a new order every epoch (training) or file order (validation).
    """

    def __init__(self, cfg: LoaderConfig, folder: str, shuffle: bool):
        self.cfg, self.folder, self.shuffle = cfg, folder, shuffle

    def __len__(self) -> int:
        return sum(s.num_samples for s in self.cfg.shards)

    def __getitem__(self, index):
        raise TypeError("LDDL shards are streamed; iterate them with task.get_batch_iterator")

    def set_epoch(self, epoch: int) -> None:
        pass  # the iterator passes the epoch explicitly

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False


class LDDLEpochBatchIterator(EpochBatchIterating):
    """fairseq's ``EpochBatchIterating`` over one rank's LDDL batches.

    Args:
        cfg: the loader settings, batch size included.
        rank, world: this rank and the number of data-parallel ranks.
        epoch: the first epoch (1-based).
        shuffle: see ``LDDLDataset``.
        workers: processes that build batches (fairseq's ``--num-workers``).
    """

    def __init__(self, cfg: LoaderConfig, rank: int, world: int, epoch: int = 1, shuffle: bool = True,
                 workers: int = 0):
        self.cfg, self.rank, self.world, self.shuffle, self.workers = cfg, rank, world, shuffle, workers
        self.epoch = max(epoch, 1)
        self._cur = None
        self._next = None
        self.stats = ChunkStats()  # of the current epoch, summed over its chunks so far
        self._padding = [0, 0]
        self._first = None

    def _epoch(self, epoch: int) -> Epoch:
        return Epoch(self.cfg, epoch, self.rank, self.world, self.shuffle)

    def __len__(self) -> int:
        return len(self._epoch(self.epoch))

    @property
    def next_epoch_idx(self) -> int:
        if self._next is not None:
            return self.epoch
        if self._cur is not None and self.end_of_epoch():
            return self.epoch + 1
        return self.epoch

    def next_epoch_itr(self, shuffle=True, fix_batches_to_gpus=False, set_dataset_epoch=True):
        self.epoch = self.next_epoch_idx
        if self._next is not None:
            self._cur, self._next = self._next, None
        else:
            self._cur = self._iterator(self.epoch, 0)
        return self._cur

    def end_of_epoch(self) -> bool:
        return not self._cur.has_next()

    @property
    def iterations_in_epoch(self) -> int:
        if self._cur is not None:
            return self._cur.n
        if self._next is not None:
            return self._next.n
        return 0

    def state_dict(self) -> dict:
        if self.end_of_epoch():
            return {"epoch": self.epoch + 1, "iterations_in_epoch": 0, "lddl_world": self.world}
        return {"epoch": self.epoch, "iterations_in_epoch": self.iterations_in_epoch, "lddl_world": self.world}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch = state_dict["epoch"]
        pos = state_dict.get("iterations_in_epoch", 0)
        world = state_dict.get("lddl_world", self.world)
        if pos and world != self.world:
            # Each rank's share is a contiguous range of the epoch's stream, so what W ranks
            # consumed is not a prefix that W' ranks could skip: the rest of the epoch is left out.
            left = len(self._epoch(self.epoch)) - pos
            logger.warning("checkpoint written by %d ranks, resuming on %d: the LDDL shares differ, so epoch %d's "
                           "remaining %d batches per rank are skipped and training continues with epoch %d",
                           world, self.world, self.epoch, left, self.epoch + 1)
            self.epoch, pos = self.epoch + 1, 0
        if pos >= len(self._epoch(self.epoch)):
            self.epoch, pos = self.epoch + 1, 0
        self._next = self._iterator(self.epoch, pos) if pos > 0 else None
        if pos:
            logger.info("resuming epoch %d of the LDDL shards at batch %d", self.epoch, pos)

    @property
    def first_batch(self):
        if self._first is None:  # fairseq's dummy batch: built from the first batch_size rows only
            self._first = self._epoch(1).first_batch()
        return self._first

    def _iterator(self, epoch: int, offset: int) -> CountingIterator:
        ep = self._epoch(epoch)
        self.stats = ChunkStats()
        return CountingIterator(self._batches(ep, offset), start=offset, total=len(ep))

    def _batches(self, ep: Epoch, offset: int):
        for batch, stats in ep.iterate(offset, self.workers):
            if stats is not None:
                for k, v in vars(stats).items():
                    setattr(self.stats, k, getattr(self.stats, k) + v)
            yield batch
        s = self.stats
        logger.info("LDDL epoch %d, rank %d/%d: %d samples in %d batches; dropped %d empty documents; "
                    "%d rows with invalid UTF-8; %d samples truncated to %d tokens", ep.epoch, self.rank,
                    self.world, s.samples, len(ep), s.empty, s.bad_utf8, s.truncated, self.cfg.tokens_per_sample)


def batch_size_for(max_sentences: int | None, max_tokens: int | None, tokens_per_sample: int) -> int:
    """Samples per batch: ``--batch-size``, else as many full-length samples as ``--max-tokens`` holds."""
    if max_sentences:
        return int(max_sentences)
    if max_tokens:
        return max(1, math.floor(max_tokens / tokens_per_sample))
    raise ValueError("LDDL data needs --batch-size (or --max-tokens)")
