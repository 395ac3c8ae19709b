"""LDDL parquet shards as BART denoising batches: per-rank shares, length bins, exact resume.

Input: a folder of parquet shards in LDDL's BART format, one string column
``sentences`` per sample (``shard-*.parquet`` and ``.num_samples.json`` after
LDDL's balancing; any ``*.parquet`` otherwise). Shards written by
``scripts/lddl_preprocess.py`` separate sentences with ``\\n``; LDDL's own join
them with spaces, and their boundaries are recovered with ``text.split_sentences``.

What LDDL's loader gets wrong and this one does instead (README, "LDDL data"):

- Order: epoch ``e`` permutes the shards and every shard's rows with generators
  seeded ``(seed, e, ...)``, so each epoch has a new order, the same on every run.
- Shares: the epoch's sample stream (shards in that order) is cut into
  ``world`` contiguous ranges of ``total // world`` samples: disjoint, equal, and
  together complete (the ``total % world`` left over differ per epoch). Any shard
  count works on any number of ranks.
- Batches: a rank's stream is cut into chunks of ``CHUNK_BATCHES`` batches; within a
  chunk, samples fill sequence-length bins and a bin that reaches the batch size
  becomes a batch; the rest are sorted by length and batched. A chunk therefore
  yields exactly ``ceil(len / batch_size)`` batches, every rank has the same number
  of batches, and batch ``k`` of an epoch is a function of ``(seed, epoch, rank, k)``:
  resuming at batch ``k`` recomputes one chunk, never the epoch's prefix.
- Streaming: a process holds its current chunk and at most two shards' text.
  Chunks are built in worker processes, in order, with a bounded prefetch.

Noise: sample ``i`` (its position in the sorted shard list) of epoch ``e`` is noised
by a generator seeded ``(seed, e, i)``, as in ``denoising_data``.
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bart_ext.denoising_data import collate, word_starts
from bart_ext.noising import NoiseConfig, Noised, Specials, noise
from bart_ext.text import split_sentences

logger = logging.getLogger(__name__)

COLUMN = "sentences"  # LDDL's BART schema
NUM_SAMPLES_FILE = ".num_samples.json"
CHUNK_BATCHES = 64  # 2,048 samples at batch 32: bins fill well (BENCHMARKS.md); a resume recomputes one chunk
_TEXT_TYPES = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())


class ShardError(ValueError):
    """A shard that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Shard:
    path: str
    num_samples: int
    first_id: int  # sample ids are positions in the sorted list of shards


@dataclass
class ShardSet:
    shards: list[Shard]
    skipped: list[str] = field(default_factory=list)  # corrupt files left out (skip_corrupt)

    @property
    def total(self) -> int:
        return sum(s.num_samples for s in self.shards)


def shard_files(folder: Path | str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"LDDL shard folder not found: {folder}")
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.parquet shards")
    return files


def is_shard_folder(folder: Path | str) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any(folder.glob("*.parquet"))


def _check_schema(path: Path, schema: pa.Schema) -> None:
    if COLUMN not in schema.names:
        raise ShardError(f"{path}: expected a text column {COLUMN!r} (LDDL's BART schema); "
                         f"found columns {schema.names}")
    kind = schema.field(COLUMN).type
    if kind not in _TEXT_TYPES:
        raise ShardError(f"{path}: column {COLUMN!r} must hold strings, found type {kind}")


def open_shards(folder: Path | str, skip_corrupt: bool = False) -> ShardSet:
    """Index a shard folder: every file's row count and schema, from parquet footers only.

    Args:
        folder: the shard folder.
        skip_corrupt: leave out (and report) files whose footer cannot be read, instead of failing.

    Raises:
        ShardError: a corrupt or truncated file, a wrong schema, or a ``.num_samples.json``
            that disagrees with a file.
    """
    files = shard_files(folder)
    listed = {}
    counts_file = Path(folder) / NUM_SAMPLES_FILE
    if counts_file.exists():
        try:
            listed = json.loads(counts_file.read_text())
        except json.JSONDecodeError as e:
            raise ShardError(f"{counts_file}: not valid JSON ({e})") from e
    shards, skipped, first = [], [], 0
    for path in files:
        try:
            meta = pq.ParquetFile(path)
            schema, rows = meta.schema_arrow, meta.metadata.num_rows
        except (pa.ArrowException, OSError) as e:
            if not skip_corrupt:
                raise ShardError(f"{path}: not a readable parquet file ({e}); rerun preprocessing for it, or "
                                 "pass --lddl-skip-corrupt to leave it out") from e
            logger.warning("skipping corrupt shard %s (%s)", path, e)
            skipped.append(str(path))
            continue
        _check_schema(path, schema)
        if path.name in listed and int(listed[path.name]) != rows:
            raise ShardError(f"{path}: {rows} rows, but {counts_file} says {listed[path.name]}")
        shards.append(Shard(str(path), rows, first))
        first += rows
    if not shards:
        raise ShardError(f"{folder}: no readable shards ({len(skipped)} corrupt)")
    return ShardSet(shards, skipped)


def rank_segments(counts: list[int], epoch: int, seed: int, rank: int, world: int,
                  shuffle: bool = True) -> list[tuple[int, int, int]]:
    """The rank's share of an epoch as ``(shard, lo, hi)``: positions ``[lo, hi)`` of the shard's row order.

    The epoch's stream is the shards in the epoch's order; rank ``r`` takes stream
    positions ``[r * n, (r + 1) * n)`` with ``n = total // world``.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    total = sum(counts)
    per_rank = total // world
    if per_rank == 0:
        raise ValueError(f"{total} samples cannot be shared among {world} ranks")
    order = np.random.default_rng([seed, epoch]).permutation(len(counts)) if shuffle else np.arange(len(counts))
    start, end = rank * per_rank, (rank + 1) * per_rank
    segments, pos = [], 0
    for shard in order.tolist():
        lo, hi = max(start, pos), min(end, pos + counts[shard])
        if lo < hi:
            segments.append((shard, lo - pos, hi - pos))
        pos += counts[shard]
        if pos >= end:
            break
    return segments


def row_order(count: int, seed: int, epoch: int, shard: int, shuffle: bool) -> np.ndarray:
    return np.random.default_rng([seed, epoch, shard]).permutation(count) if shuffle else np.arange(count)


@dataclass
class LoaderConfig:
    """Everything a worker needs to turn stream positions into batches (pickled to workers).

    Args:
        shards: the indexed shards.
        encoder: a ``bpe`` encoder (``encode_batch``).
        id_table: BPE id -> dictionary index.
        word_start: the dictionary's word-start table.
        specials: special symbol indices.
        pad: the padding index.
        noise: the noise settings.
        tokens_per_sample: longest sample, ``<s>`` and ``</s>`` included (longer ones are truncated, counted).
        batch_size: samples per batch.
        bin_size: width of the sequence-length bins in tokens; 0 batches in stream order.
        seed: the run's seed.
    """

    shards: list[Shard]
    encoder: object
    id_table: np.ndarray
    word_start: np.ndarray
    specials: Specials
    pad: int
    noise: NoiseConfig
    tokens_per_sample: int
    batch_size: int
    bin_size: int
    seed: int


@dataclass
class ChunkStats:
    samples: int = 0
    empty: int = 0  # empty or whitespace-only documents, dropped
    bad_utf8: int = 0  # rows with invalid UTF-8, decoded with replacement characters
    truncated: int = 0  # samples longer than tokens_per_sample, cut


class _ShardCache:
    """The last two shards' text columns read by this process."""

    def __init__(self, keep: int = 2):
        self.keep, self.tables = keep, OrderedDict()

    def column(self, path: str) -> pa.Array:
        if path not in self.tables:
            try:
                table = pq.read_table(path, columns=[COLUMN])
            except (pa.ArrowException, OSError) as e:
                raise ShardError(f"{path}: cannot read column {COLUMN!r} ({e})") from e
            self.tables[path] = table.column(COLUMN).combine_chunks().cast(pa.large_binary())
            while len(self.tables) > self.keep:
                self.tables.popitem(last=False)
        self.tables.move_to_end(path)
        return self.tables[path]


_cache = _ShardCache()


def _decode(raw: bytes, stats: ChunkStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.bad_utf8 += 1
        return raw.decode("utf-8", errors="replace")


def document_sentences(text: str) -> list[str]:
    """A shard row's sentences: ``\\n``-separated (bart_ext's shards) or recovered by sentence splitting (LDDL's)."""
    if "\n" in text:
        return [s.strip() for s in text.split("\n") if s.strip()]
    return split_sentences(text)


class Epoch:
    """One rank's batches of one epoch.

    Args:
        cfg: the loader settings.
        epoch: 1-based epoch.
        rank, world: this rank and the number of ranks.
        shuffle: permute shards and rows (training); False reads in file order (validation).
    """

    def __init__(self, cfg: LoaderConfig, epoch: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.cfg, self.epoch, self.rank, self.world, self.shuffle = cfg, epoch, rank, world, shuffle
        counts = [s.num_samples for s in cfg.shards]
        self.segments = rank_segments(counts, epoch, cfg.seed, rank, world, shuffle)
        self.num_samples = sum(hi - lo for _, lo, hi in self.segments)
        self.chunk_samples = CHUNK_BATCHES * cfg.batch_size
        self.num_chunks = math.ceil(self.num_samples / self.chunk_samples)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.cfg.batch_size)

    def chunk_batches(self, chunk: int) -> int:
        size = min(self.chunk_samples, self.num_samples - chunk * self.chunk_samples)
        return math.ceil(size / self.cfg.batch_size)

    def chunk_rows(self, chunk: int) -> list[tuple[int, np.ndarray]]:
        """``(shard, rows)`` pieces of the chunk's stream positions, in stream order."""
        lo, hi = chunk * self.chunk_samples, min((chunk + 1) * self.chunk_samples, self.num_samples)
        pieces, pos = [], 0
        for shard, s_lo, s_hi in self.segments:
            a, b = max(lo, pos), min(hi, pos + s_hi - s_lo)
            if a < b:
                order = row_order(self.cfg.shards[shard].num_samples, self.cfg.seed, self.epoch, shard, self.shuffle)
                pieces.append((shard, order[s_lo + a - pos : s_lo + b - pos]))
            pos += s_hi - s_lo
            if pos >= hi:
                break
        return pieces

    def samples(self, chunk: int, stats: ChunkStats, limit: int | None = None) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """The chunk's clean samples: ``(sample id, tokens, sentence lengths)``; empty documents dropped.

        Args:
            limit: read only the chunk's first ``limit`` rows.
        """
        cfg = self.cfg
        ids, docs, left = [], [], limit
        for shard, rows in self.chunk_rows(chunk):
            column = _cache.column(cfg.shards[shard].path)
            if left is not None:
                rows, left = rows[:left], left - min(left, len(rows))
            for row in rows.tolist():
                raw = column[row].as_py()
                text = _decode(raw, stats) if raw is not None else ""
                sentences = document_sentences(text)
                if not sentences:
                    stats.empty += 1
                    continue
                ids.append(cfg.shards[shard].first_id + row)
                docs.append(sentences)
        flat = [" " + s for doc in docs for s in doc]  # every sentence with its leading space
        encoded = cfg.encoder.encode_batch(flat) if flat else []
        out, k, room = [], 0, cfg.tokens_per_sample - 2
        for sample_id, doc in zip(ids, docs):
            pieces = [cfg.id_table[np.asarray(e, dtype=np.int64)] for e in encoded[k : k + len(doc)]]
            k += len(doc)
            lengths = np.array([len(p) for p in pieces], dtype=np.int64)
            tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
            if len(tokens) > room:  # keep whole leading sentences plus a cut of the next
                stats.truncated += 1
                tokens = tokens[:room]
                ends = np.minimum(np.cumsum(lengths), room)
                lengths = np.diff(np.concatenate([[0], ends]))
            lengths = lengths[lengths > 0]
            if len(tokens) == 0:
                stats.empty += 1
                continue
            out.append((sample_id, tokens, lengths))
        stats.samples += len(out)
        return out

    def batches(self, chunk: int) -> tuple[list[dict], ChunkStats]:
        """The chunk's batches, exactly ``chunk_batches(chunk)`` of them (empty ``{}`` fill in for dropped samples)."""
        stats = ChunkStats()
        out = [self._collate(group) for group in self._group(self._noised(self.samples(chunk, stats)), chunk)]
        out += [{}] * (self.chunk_batches(chunk) - len(out))  # fairseq treats {} as a dummy batch
        return out, stats

    def first_batch(self) -> dict:
        """One batch of the epoch's first samples, read alone (fairseq's dummy batch for empty steps)."""
        return self._collate(self._noised(self.samples(0, ChunkStats(), limit=self.cfg.batch_size)))

    def _noise(self, sample_id: int, tokens: np.ndarray, lengths: np.ndarray) -> Noised:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.epoch, sample_id])
        return noise(tokens, lengths, word_starts(cfg.word_start, tokens, lengths), cfg.noise, cfg.specials, rng)

    def _noised(self, samples: list) -> list[dict]:
        out = []
        for sample_id, tokens, lengths in samples:
            n = self._noise(sample_id, tokens, lengths)
            out.append({"id": sample_id, "source": torch.from_numpy(n.source), "target": torch.from_numpy(n.target)})
        return out

    def noised_samples(self, limit: int) -> list[tuple[int, Noised]]:
        """The epoch's first ``limit`` rows as ``(sample id, noised sample)``, noised as training noises
        them (empty documents dropped, so there may be fewer): what scripts/show_noise.py prints."""
        out = []
        for chunk in range(self.num_chunks):
            left = limit - len(out)
            if left <= 0:
                break
            out += [(i, self._noise(i, t, n)) for i, t, n in self.samples(chunk, ChunkStats(), limit=left)]
        return out

    def _collate(self, group: list[dict]) -> dict:
        return with_padding_counts(collate(group, self.cfg.pad, self.cfg.specials.eos), self.cfg.pad)

    def _group(self, samples: list[dict], chunk: int) -> list[list[dict]]:
        """Noised samples -> batches: full length bins first, then the rest sorted by length; order shuffled.

        A bin is a pair (source length // width, target length // width): noise changes
        source lengths by different amounts, so both sides are binned.
        """
        bs, width = self.cfg.batch_size, self.cfg.bin_size
        if width <= 0:
            groups = [samples[i : i + bs] for i in range(0, len(samples), bs)]
        else:
            bins: dict[tuple[int, int], list] = {}
            groups = []
            for s in samples:
                b = bins.setdefault((len(s["source"]) // width, len(s["target"]) // width), [])
                b.append(s)
                if len(b) == bs:
                    groups.append(b[:])
                    b.clear()
            rest = sorted((s for b in bins.values() for s in b), key=lambda s: (len(s["source"]), len(s["target"])))
            groups += [rest[i : i + bs] for i in range(0, len(rest), bs)]
        if self.shuffle:
            order = np.random.default_rng([self.cfg.seed, self.epoch, self.rank, chunk]).permutation(len(groups))
            groups = [groups[i] for i in order]
        return groups

    def iterate(self, start: int = 0, workers: int = 0, prefetch: int | None = None) -> Iterator[tuple[dict, ChunkStats | None]]:
        """Batches ``start, start + 1, ...`` with the stats of each chunk on its first batch yielded.

        Args:
            start: the first batch (a resume position).
            workers: worker processes building chunks (0: in this process).
            prefetch: chunks in flight (default ``2 * workers``).
        """
        first_chunk, skip = self._locate(start)
        chunks = range(first_chunk, self.num_chunks)
        if workers <= 0:
            results = (self.batches(c) for c in chunks)
            yield from self._flatten(results, skip)
            return
        with multiprocessing.get_context(pool_start_method()).Pool(workers, initializer=_set_worker_epoch, initargs=(self,)) as pool:
            yield from self._flatten(_ordered(pool, chunks, prefetch or 2 * workers), skip)

    def _locate(self, start: int) -> tuple[int, int]:
        if not 0 <= start <= len(self):
            raise ValueError(f"batch {start} outside an epoch of {len(self)} batches")
        return start // CHUNK_BATCHES, start % CHUNK_BATCHES

    @staticmethod
    def _flatten(results, skip: int):
        for batches, stats in results:
            yield from ((b, stats if i == skip else None) for i, b in enumerate(batches[skip:], start=skip))
            skip = 0


def pool_start_method() -> str:
    """``fork`` (fast: workers inherit the shard index) unless CUDA is initialised in this process
    (a trainer on a GPU, NCCL started): forking a CUDA process is unsafe, so workers are spawned."""
    if "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


_worker_epoch: Epoch | None = None  # set once per worker process


def _set_worker_epoch(epoch: Epoch) -> None:
    global _worker_epoch
    _worker_epoch = epoch
    torch.set_num_threads(1)


def _build_chunk(chunk: int) -> tuple[list[dict], ChunkStats]:
    return _worker_epoch.batches(chunk)


def _ordered(pool, chunks, prefetch: int):
    """Chunk results in chunk order with at most ``prefetch`` in flight."""
    it = iter(chunks)
    pending = [pool.apply_async(_build_chunk, (c,)) for _, c in zip(range(prefetch), it)]  # range first: no item lost
    while pending:
        result = pending.pop(0).get()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.apply_async(_build_chunk, (nxt,)))
        yield result


def with_padding_counts(batch: dict, pad: int) -> dict:
    """Add ``padding``: pad tokens and all token slots of the batch's sources and targets, as Python
    ints counted here on the host (fairseq moves a batch's tensors to the GPU; reading a count back
    from there would synchronise every step)."""
    if batch:
        src, tgt = batch["net_input"]["src_tokens"], batch["target"]
        pads = int((src == pad).sum()) + int((tgt == pad).sum())
        batch["padding"] = (pads, src.numel() + tgt.numel())
    return batch
