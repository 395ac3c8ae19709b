"""LDDL data end to end: aclsum -> dask preprocessing -> shards -> fairseq-train (ours and LDDL's own shards)."""
from __future__ import annotations

import json
import os
import re
import sys

import pyarrow.parquet as pq
import pytest
import torch

from bart_ext.bpe import GPT2Encoder
from tests.conftest import ROOT
from tests.integration.conftest import LENGTH, lddl_args, preprocess
from tests.integration.fairseq_run import fairseq_train, resume_runs, run, train_losses


def all_rows(folder):
    return [r for f in sorted(folder.glob("shard-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))
            for r in pq.read_table(f)["sentences"].to_pylist()]


@pytest.mark.parametrize("where", ["scheduler", "mpi"])
def test_preprocessing_on_a_scheduler_or_mpi_writes_the_same_samples(shards, cli_env, tmp_path, where):
    out = tmp_path / where
    if where == "mpi":
        mpirun = str(ROOT / ".venv" / "bin" / "mpirun") if (ROOT / ".venv" / "bin" / "mpirun").exists() else "mpirun"
        run([mpirun, "-n", "3", sys.executable, str(ROOT / "scripts" / "lddl_preprocess.py"), "--aclsum", "--mpi",
             "--out", str(out), "--target-seq-length", str(LENGTH), "--num-shards", "3"], cli_env)
    else:
        from dask.distributed import LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
            preprocess(out, cli_env, "--scheduler", cluster.scheduler_address, "--num-shards", "3")
    assert all_rows(out / "train") == all_rows(shards / "train")  # 3 shards here, 4 there: same samples in order
    assert json.loads((out / "train" / ".num_samples.json").read_text()).keys() == {f"shard-{i}.parquet"
                                                                                     for i in range(3)}


def test_shards_are_balanced_and_fit_the_length_in_bpe_tokens(shards):
    counts = json.loads((shards / "train" / ".num_samples.json").read_text())
    assert len(counts) == 4 and max(counts.values()) - min(counts.values()) <= 1
    enc = GPT2Encoder(shards / "encoder.json", shards / "vocab.bpe")
    rows = all_rows(shards / "train")
    assert len(rows) == sum(counts.values())
    lengths = [sum(len(ids) for ids in enc.encode_batch([" " + s for s in r.split("\n")])) for r in rows]
    assert max(lengths) <= LENGTH - 2, "a sample does not fit once BPE-tokenized"
    assert sum(n > LENGTH * 0.7 for n in lengths) > 0.8 * len(lengths), "samples should be near the target length"
    assert sum("\n" in r for r in rows) > 0.5 * len(rows), "sentence boundaries should be kept"  # 84% at 128


def test_fairseq_train_on_shards_loss_falls(shards, cli_env, tmp_path):
    log = fairseq_train(lddl_args(shards, tmp_path, 30), cli_env)
    losses = train_losses(log)
    assert sorted(losses) == list(range(1, 31))
    first = sum(losses[u] for u in range(1, 6)) / 5
    last = sum(losses[u] for u in range(26, 31)) / 5
    assert last < first - 0.5, (first, last)
    shares = [float(m) for m in re.findall(r'"pad_share": "([\d.]+)"', log)]
    assert shares and max(shares) < 0.5
    assert "LDDL samples in 4 shards" in log


def test_resume_mid_epoch_continues_exactly(shards, cli_env, tmp_path):
    n = 4
    straight, first, resumed_log = resume_runs(lambda d, u: lddl_args(shards, d, u), tmp_path, n, cli_env)
    assert "resuming epoch 1 of the LDDL shards at batch 4" in resumed_log
    resumed = train_losses(resumed_log)
    assert sorted(resumed) == list(range(n + 1, 2 * n + 1))
    for update, loss in {**first, **resumed}.items():
        assert loss == pytest.approx(straight[update], abs=1e-6), update
    state = torch.load(tmp_path / "b" / "checkpoint_last.pt", weights_only=True)["extra_state"]["train_iterator"]
    assert state["epoch"] == 1 and state["iterations_in_epoch"] == 2 * n


def test_lddl_own_pipeline_shards_load_and_train(data_dir, cli_env, tmp_path):
    out = tmp_path / "lddl_engine"
    # 3 shards: NVIDIA's balance_dask_output fails when the samples divide evenly into the
    # shards (4570 into 2 on this corpus: TypeError in Shard.flush; seen 2026-11-28, left as is).
    preprocess(out, cli_env, "--engine", "lddl", "--num-shards", "3")
    files = sorted((out / "train").glob("*.parquet"))
    assert [f.name for f in files] == ["shard-0.parquet", "shard-1.parquet", "shard-2.parquet"]
    assert json.loads((out / "train" / ".num_samples.json").read_text()).keys() == {f.name for f in files}
    rows = pq.read_table(files[0])["sentences"].to_pylist()
    assert not any("\n" in r for r in rows), "LDDL joins sentences with spaces"
    losses = train_losses(fairseq_train(lddl_args(out, tmp_path / "ck", 8), cli_env))
    assert sorted(losses) == list(range(1, 9)) and all(v == v for v in losses.values())
    assert min(losses[u] for u in range(5, 9)) < losses[1]


def test_gpu_mfu_benchmark_runs_real_lddl_batches_through_the_training_step(shards, tmp_path):
    """scripts/bench_gpu_mfu.py on the CPU (its smoke test): real LDDL batches with padding,
    the registered model, the fused criterion and fairseq's NVLAMB wrapper."""
    from scripts.bench_gpu_mfu import main

    rows = main([str(shards), "--device", "cpu", "--arch", "bart_tiny_preln", "--lengths", str(LENGTH),
                 "--batch", "8", "--steps", "2", "--warmup", "1", "--profile", "2", "--trace", str(tmp_path)])
    assert len(rows) == 1 and rows[0]["length"] == LENGTH and rows[0]["batch"] == 8
    assert 0 < rows[0]["target_padding"] < 0.5  # bins keep padding low, but real batches have some
    assert rows[0]["sequences_per_s"] > 0 and rows[0]["tflops"] > 0
    assert rows[0]["graphs_compiled_while_timed"] == 0 and rows[0]["graph_breaks"] == {}  # eager: nothing compiled
    # --profile: the step's phases as fairseq's train_step and the optimizer name them, and a trace
    prof = rows[0]["profile"]
    assert prof["steps"] == 2 and prof["device_busy"] is None  # no GPU kernels on the CPU
    assert set(prof["phases_s_per_step"]) == {"forward", "backward", "optimizer"}
    assert sum(prof["phases_s_per_step"].values()) <= prof["wall_s_per_step"] * 1.05
    assert all(v > 0 for v in prof["phases_s_per_step"].values())
    assert json.loads((tmp_path / "bench_gpu_mfu_trace.json").read_text())["traceEvents"]


def test_dropout_benchmark_runs_on_real_lddl_batches(shards):
    """scripts/bench_dropout.py's smoke test: both settings through the demo model's real training step."""
    from bart_ext import dropout as counter_dropout
    from scripts.bench_dropout import main

    if counter_dropout.load() is None:
        pytest.skip("no C compiler: the dropout kernel is not built")
    out = main(["--data", str(shards), "--rounds", "2", "--steps", "1", "--reps", "2"])
    assert len(out["call_speedup"]) == 2 and all(r > 0 for r in out["call_speedup"].values())
    assert out["step_speedup"] > 0
    assert "BART_EXT_DROPOUT" not in os.environ  # the switch is left as it was
