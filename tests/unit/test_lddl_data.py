"""LDDL shards: per-rank shares, epoch orders, exact resume, length bins and bad input."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bart_ext import lddl_data
from bart_ext.lddl_data import Epoch, LoaderConfig, ShardError, open_shards
from bart_ext.lddl_prep import balance, pack_document, process_lines
from bart_ext.noising import NoiseConfig, Specials

VOCAB = 500


class WordEncoder:
    """One id per whitespace word (a stable hash): enough to test the loader without BPE files."""

    def encode_batch(self, texts):
        return [[zlib.crc32(w.encode()) % VOCAB for w in t.split()] for t in texts]


def config(shards, batch_size=4, bin_size=8, tokens=40, seed=3) -> LoaderConfig:
    return LoaderConfig(
        shards=shards, encoder=WordEncoder(), id_table=np.arange(VOCAB) + 4,
        word_start=np.ones(VOCAB + 5, dtype=bool), specials=Specials(bos=0, eos=2, mask=VOCAB + 4, size=VOCAB + 5,
                                                                      first_regular=4),
        pad=1, noise=NoiseConfig(), tokens_per_sample=tokens, batch_size=batch_size, bin_size=bin_size, seed=seed)


def document(rng, i) -> str:
    """A sample row as bart_ext writes it: sentences separated by newlines, of varied lengths."""
    return "\n".join(f"Doc{i} sentence {j} " + " ".join(f"w{rng.integers(50)}" for _ in range(rng.integers(2, 9)))
                     for j in range(rng.integers(1, 5)))


def write_shards(folder, sizes, rows=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    k = 0
    for i, n in enumerate(sizes):
        texts = rows[k : k + n] if rows is not None else [document(rng, k + j) for j in range(n)]
        pq.write_table(pa.table({"sentences": pa.array(texts, pa.string())}), folder / f"shard-{i}.parquet")
        k += n
    (folder / ".num_samples.json").write_text(json.dumps({f"shard-{i}.parquet": n for i, n in enumerate(sizes)}))
    return open_shards(folder).shards


def epoch_ids(cfg, epoch, rank=0, world=1, start=0, workers=0, shuffle=True):
    batches = [b for b, _ in Epoch(cfg, epoch, rank, world, shuffle).iterate(start, workers)]
    return batches, [int(i) for b in batches if b for i in b["id"]]


@pytest.mark.parametrize("sizes", [[50, 50, 50, 50], [70, 41, 89]])  # balanced; a count that does not divide
def test_two_ranks_disjoint_equal_and_complete(tmp_path, sizes):
    cfg = config(write_shards(tmp_path, sizes))
    total = sum(sizes)
    b0, r0 = epoch_ids(cfg, 1, 0, 2)
    b1, r1 = epoch_ids(cfg, 1, 1, 2)
    assert len(r0) == len(r1) == total // 2
    assert not set(r0) & set(r1)
    assert len(set(r0) | set(r1)) == total - total % 2
    assert len(b0) == len(b1) == len(Epoch(cfg, 1, 0, 2)), "ranks must take the same number of steps"


def test_each_epoch_has_a_new_order_and_every_run_the_same(tmp_path):
    cfg = config(write_shards(tmp_path, [40, 40, 40]))
    _, e1 = epoch_ids(cfg, 1)
    _, e2 = epoch_ids(cfg, 2)
    _, again = epoch_ids(cfg, 1)
    assert sorted(e1) == sorted(e2) == list(range(120))
    assert e1 != e2 and e1 == again
    _, fixed = epoch_ids(cfg, 1, shuffle=False)  # validation: file order, same every epoch
    _, fixed2 = epoch_ids(cfg, 2, shuffle=False)
    assert sorted(fixed) == sorted(fixed2) == list(range(120))


def test_mid_epoch_resume_yields_exactly_the_remaining_samples(tmp_path):
    cfg = config(write_shards(tmp_path, [300, 300]), batch_size=4)  # 150 batches: several chunks
    full, ids = epoch_ids(cfg, 2)
    for start in (1, 37, lddl_data.CHUNK_BATCHES, len(full) - 1):
        rest, rest_ids = epoch_ids(cfg, 2, start=start)
        done = [int(i) for b in full[:start] if b for i in b["id"]]
        assert rest_ids == ids[len(done):], start
        assert not set(done) & set(rest_ids) and len(done) + len(rest_ids) == len(ids)
        first = full[start]
        assert (rest[0]["net_input"]["src_tokens"] == first["net_input"]["src_tokens"]).all()  # same noise too


def test_worker_processes_give_the_same_batches(tmp_path):
    cfg = config(write_shards(tmp_path, [200, 200]))
    seq, ids = epoch_ids(cfg, 1)
    par, pids = epoch_ids(cfg, 1, workers=2)
    assert ids == pids
    for a, b in zip(seq, par):
        assert (a["net_input"]["src_tokens"] == b["net_input"]["src_tokens"]).all()


def test_length_bins_cut_padding(tmp_path):
    rng = np.random.default_rng(1)
    rows = [" ".join(f"w{j}" for j in range(int(n))) for n in rng.integers(3, 38, size=800)]  # one sentence each
    shards = write_shards(tmp_path, [400, 400], rows)

    def pad_share(bin_size):
        batches = [b for b, _ in Epoch(config(shards, batch_size=8, bin_size=bin_size), 1).iterate()]
        assert all(isinstance(v, int) for b in batches if b for v in b["padding"])  # host ints: no device read-back
        pads, slots = np.sum([b["padding"] for b in batches if b], axis=0)
        return pads / slots

    assert pad_share(4) < pad_share(0) / 3


def test_sentence_boundaries_kept_or_recovered(tmp_path):
    ours = "First one here.\nSecond sentence is longer here.\nThird."
    lddl = " First one here. Second sentence is longer here. Third."
    assert lddl_data.document_sentences(ours) == lddl_data.document_sentences(lddl) == [
        "First one here.", "Second sentence is longer here.", "Third."]
    cfg = config(write_shards(tmp_path, [2], [ours, lddl]), batch_size=2)
    stats = lddl_data.ChunkStats()
    samples = Epoch(cfg, 1, shuffle=False).samples(0, stats)
    assert [list(s[2]) for s in samples] == [[3, 5, 1], [3, 5, 1]]


def test_empty_documents_dropped_and_counted_without_changing_the_step_count(tmp_path):
    rows = ["a b c"] * 5 + ["", "   \n  "] + ["d e f"] * 5
    cfg = config(write_shards(tmp_path, [12], rows), batch_size=4)
    ep = Epoch(cfg, 1)
    batches, stats = ep.batches(0)
    assert stats.empty == 2 and stats.samples == 10
    assert len(batches) == len(ep) == 3 and sum(len(b["id"]) for b in batches if b) == 10


def test_truncated_samples_are_counted(tmp_path):
    cfg = config(write_shards(tmp_path, [2], ["x " * 100, "short one"]), tokens=20, batch_size=2)
    stats = lddl_data.ChunkStats()
    samples = Epoch(cfg, 1, shuffle=False).samples(0, stats)
    assert stats.truncated == 1 and len(samples[0][1]) == 18 and int(samples[0][2].sum()) == 18


def test_invalid_utf8_is_decoded_and_counted(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    table = pa.table({"sentences": pa.array([b"caf\xe9 au lait", b"fine text"], pa.binary())})
    pq.write_table(table, tmp_path / "shard-0.parquet")
    cfg = config(open_shards(tmp_path).shards, batch_size=2)
    stats = lddl_data.ChunkStats()
    samples = Epoch(cfg, 1, shuffle=False).samples(0, stats)
    assert stats.bad_utf8 == 1 and len(samples) == 2


def test_corrupt_shard_named_or_skipped(tmp_path):
    write_shards(tmp_path, [20, 20, 20])
    data = (tmp_path / "shard-1.parquet").read_bytes()
    (tmp_path / "shard-1.parquet").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ShardError, match="shard-1.parquet"):
        open_shards(tmp_path)
    shards = open_shards(tmp_path, skip_corrupt=True)
    assert shards.skipped == [str(tmp_path / "shard-1.parquet")] and shards.total == 40


def test_wrong_schema_names_the_expected_column(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    pq.write_table(pa.table({"text": ["a b"]}), tmp_path / "shard-0.parquet")
    with pytest.raises(ShardError, match=r"shard-0.parquet.*'sentences'"):
        open_shards(tmp_path)
    pq.write_table(pa.table({"sentences": [1, 2]}), tmp_path / "shard-0.parquet")
    with pytest.raises(ShardError, match="must hold strings"):
        open_shards(tmp_path)


def test_num_samples_file_must_agree(tmp_path):
    write_shards(tmp_path, [5, 5])
    (tmp_path / ".num_samples.json").write_text(json.dumps({"shard-0.parquet": 6}))
    with pytest.raises(ShardError, match="shard-0.parquet: 5 rows"):
        open_shards(tmp_path)


def test_too_few_samples_for_the_ranks_is_refused(tmp_path):
    cfg = config(write_shards(tmp_path, [3]))
    with pytest.raises(ValueError, match="3 samples cannot be shared among 4 ranks"):
        Epoch(cfg, 1, 0, 4)


def test_pack_document_fits_the_room_and_keeps_sentences_whole():
    sentences = ["a b c", "d e", "f g h i j", "k " * 30]
    counts = [3, 2, 5, 30]
    samples, cut = pack_document(sentences, counts, room=8, encoder=WordEncoder())
    assert samples[:2] == [["a b c", "d e"], ["f g h i j"]]
    assert cut == 1 and all(len(" ".join(s).split()) <= 8 for s in samples)
    assert " ".join(w for s in samples for w in " ".join(s).split()) == " ".join(" ".join(sentences).split())


def test_process_lines_drops_empty_and_counts_bad_utf8():
    bad = b"caf\xe9 ok. Next one.".decode("utf-8", errors="surrogateescape")
    rows, stats = process_lines(["Good text here. More text.", "", "   ", bad], WordEncoder(), 64)
    assert stats.documents == 2 and stats.empty_documents == 2 and stats.bad_utf8_lines == 1
    assert rows[0] == "Good text here.\nMore text." and "\ufffd" in rows[1]


def test_balance_writes_equal_shards(tmp_path):
    parts = []
    for i, n in enumerate([7, 1, 12]):
        parts.append(tmp_path / f"part-{i}.parquet")
        pq.write_table(pa.table({"sentences": [f"p{i} r{j}" for j in range(n)]}), parts[-1])
    sizes = balance(parts, tmp_path / "out", 3)
    assert sizes == [7, 7, 6]
    shards = open_shards(tmp_path / "out")
    assert [s.num_samples for s in shards.shards] == sizes
    rows = [r for s in shards.shards for r in pq.read_table(s.path)["sentences"].to_pylist()]
    assert rows == [f"p{i} r{j}" for i, n in enumerate([7, 1, 12]) for j in range(n)]


def test_streaming_holds_at_most_two_shards(tmp_path):
    cfg = config(write_shards(tmp_path, [30] * 6), batch_size=2)
    lddl_data._cache.tables.clear()
    seen = 0
    for batch, _ in Epoch(cfg, 1).iterate():
        seen += len(batch["id"]) if batch else 0
        assert len(lddl_data._cache.tables) <= 2
    assert seen == 180


def test_first_batch_reads_only_the_first_rows(tmp_path):
    cfg = config(write_shards(tmp_path, [50, 50]), batch_size=4)
    ep = Epoch(cfg, 1)
    first = ep.first_batch()
    rows = [cfg.shards[s].first_id + int(r) for s, r_ in ep.chunk_rows(0) for r in r_][:4]
    assert sorted(int(i) for i in first["id"]) == sorted(rows)
    assert first["net_input"]["src_tokens"].shape[0] == 4


def test_workers_are_spawned_once_cuda_is_initialised(tmp_path, monkeypatch):
    assert lddl_data.pool_start_method() == "fork"  # no CUDA here: fork, as before
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert lddl_data.pool_start_method() == "spawn"
    cfg = config(write_shards(tmp_path, [120, 80]))
    seq, ids = epoch_ids(cfg, 1)
    spawned, sids = epoch_ids(cfg, 1, workers=2)  # spawned workers get the epoch by pickling
    assert ids == sids
    for a, b in zip(seq, spawned):
        assert (a["net_input"]["src_tokens"] == b["net_input"]["src_tokens"]).all()
