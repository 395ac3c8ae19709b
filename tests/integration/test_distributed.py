"""torchrun on the CPU: one job over gloo (not independent copies), equal to one process with --update-freq."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from tests.conftest import ROOT
from tests.integration.fairseq_run import USER_DIR, run, train_args, train_losses

EXACT = str(ROOT / "tests" / "integration" / "fairseq_train_exact.py")
UPDATES = 4


def args_for(data_dir, save_dir, *extra):
    return train_args(data_dir, save_dir, UPDATES, "--dropout", "0", *extra)  # dropout RNG differs per rank


@pytest.fixture(scope="module")
def reference(data_dir, cli_env, tmp_path_factory):
    """One process, two batches per update."""
    tmp = tmp_path_factory.mktemp("ref")
    env = dict(cli_env, EXACT_DUMP_WEIGHTS=str(tmp / "weights"))
    log = run([sys.executable, EXACT, *args_for(data_dir, tmp / "ck", "--update-freq", "2")], env)
    return train_losses(log), torch.load(tmp / "weights" / "rank0.pt")


def check_against(reference, log, weights_dir):
    ref_losses, ref_weights = reference
    assert "distributed init (rank 1)" in log and "distributed_world_size': 2" in log, "expected one 2-rank job"
    losses = train_losses(log)
    assert sorted(losses) == list(range(1, UPDATES + 1))
    for u, loss in losses.items():
        assert loss == pytest.approx(ref_losses[u], abs=1e-5), u
    w0, w1 = (torch.load(weights_dir / f"rank{r}.pt") for r in (0, 1))
    for key in w0:
        assert torch.equal(w0[key], w1[key]), f"ranks differ at {key}"
        torch.testing.assert_close(w0[key], ref_weights[key], atol=1e-5, rtol=0)


def torchrun(bin_dir):
    path = os.path.join(bin_dir, "torchrun")
    return path if os.path.exists(path) else "torchrun"


def test_two_ranks_equal_one_process_with_update_freq_2(data_dir, cli_env, tmp_path, reference):
    env = dict(cli_env, EXACT_DUMP_WEIGHTS=str(tmp_path / "weights"))
    log = run([torchrun(os.path.dirname(sys.executable)), "--nproc-per-node", "2", "--master-port", "29531",
               EXACT, *args_for(data_dir, tmp_path / "ck")], env)
    check_against(reference, log, tmp_path / "weights")


def test_two_nodes_on_loopback_form_one_job(data_dir, cli_env, tmp_path, reference):
    import subprocess

    env = dict(cli_env, EXACT_DUMP_WEIGHTS=str(tmp_path / "weights"))
    cmd = [torchrun(os.path.dirname(sys.executable)), "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:29541", "--rdzv-id", "loopback",
           EXACT, *args_for(data_dir, tmp_path / "ck")]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    assert sum("train_inner" in o for o in outs) == 1, "only the node that got rank 0 logs training"
    check_against(reference, "\n".join(outs), tmp_path / "weights")


def hydra_tiny(launcher: list[str], data_dir, save_dir) -> list[str]:
    return [*launcher, "--config-dir", str(ROOT / "configs" / "pretrain"), "--config-name", "tiny",
            f"task.data={data_dir / 'bin'}", f"common.user_dir={USER_DIR}", f"checkpoint.save_dir={save_dir}",
            "optimization.max_update=3", "dataset.max_tokens=512", f"hydra.run.dir={save_dir / 'hydra'}",
            "common.log_interval=1"]


def test_hydra_train_under_torchrun_is_one_job(data_dir, cli_env, tmp_path):
    """scripts/hydra_train.py: fairseq-hydra-train with the plugin's torchrun fix in place."""
    env = dict(cli_env, OMP_NUM_THREADS="1")
    log = run(hydra_tiny([torchrun(os.path.dirname(sys.executable)), "--nproc-per-node", "2", "--master-port", "29551",
                          str(ROOT / "scripts" / "hydra_train.py")], data_dir, tmp_path), env)
    assert "distributed init (rank 1)" in log and "'distributed_world_size': 2" in log, "expected one 2-rank job"
    assert log.count('"num_updates": "3"') >= 1 and (tmp_path / "checkpoint_last.pt").exists()
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert state["cfg"]["distributed_training"]["distributed_world_size"] == 2


def test_stock_hydra_train_under_torchrun_is_refused_before_training(data_dir, cli_env, tmp_path):
    """fairseq's own entry loads the plugin too late to fix the launch: each rank refuses, naming the fix."""
    import subprocess

    env = dict(cli_env, OMP_NUM_THREADS="1")
    cmd = hydra_tiny([torchrun(os.path.dirname(sys.executable)), "--nproc-per-node", "2", "--master-port", "29561",
                      "-m", "fairseq_cli.hydra_train"], data_dir, tmp_path)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode != 0
    assert "would train independent copies into one save_dir" in out.stdout + out.stderr
    assert "scripts/hydra_train.py" in out.stdout + out.stderr
    assert not list(tmp_path.glob("checkpoint*.pt"))
