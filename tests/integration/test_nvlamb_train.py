"""`--optimizer nvlamb` through fairseq's trainer, and NVIDIA's two-phase recipe configs."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import ROOT
from tests.integration.fairseq_run import USER_DIR, fairseq_train, run, train_args, train_losses

NVLAMB = ["--optimizer", "nvlamb", "--lr", "0.03", "--weight-decay", "0.01"]


def nvlamb_args(data_dir, save, updates, *extra):
    args = train_args(data_dir, save, updates, *extra)
    i = args.index("--optimizer")
    del args[i : i + 6]  # adam, its betas and lr
    return args + NVLAMB


def test_nvlamb_trains_bart_tiny_preln(data_dir, cli_env, tmp_path):
    losses = train_losses(fairseq_train(nvlamb_args(data_dir, tmp_path, 50), cli_env))
    first = sum(losses[u] for u in range(1, 6)) / 5
    last = sum(losses[u] for u in range(46, 51)) / 5
    assert last < first - 1.0, (first, last)
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert state["optimizer_history"][-1]["optimizer_name"] == "FairseqNVLAMB"


# --amp on the CPU: fairseq wraps nvlamb in its AMPOptimizer, whose CUDA GradScaler is inactive here, so
# this checks the wiring; the scaled fp16 arithmetic itself is what the --fp16 cases exercise.
@pytest.mark.parametrize("precision", [["--fp16", "--fp16-no-flatten-grads"], ["--memory-efficient-fp16"], ["--amp"]])
def test_nvlamb_under_fairseq_fp16(data_dir, cli_env, tmp_path, precision):
    losses = train_losses(fairseq_train(nvlamb_args(data_dir, tmp_path, 12, *precision), cli_env))
    assert len(losses) >= 8 and all(v == v for v in losses.values())  # steps ran, no NaN
    assert min(losses.values()) < losses[min(losses)]


def test_recipe_phase1_then_phase2_from_its_weights(data_dir, cli_env, tmp_path):
    small = ["model._name=bart_tiny_preln", "common.cpu=true", "dataset.batch_size=8", "dataset.num_workers=0",
             "optimization.update_freq=[2]", "dataset.validate_interval_updates=0", "dataset.disable_validation=true",
             "common.log_interval=1", f"task.data={data_dir / 'bin'}", f"common.user_dir={USER_DIR}"]
    p1, p2 = tmp_path / "phase1", tmp_path / "phase2"
    out1 = run(["fairseq-hydra-train", "--config-dir", str(ROOT / "configs" / "pretrain"), "--config-name",
                "phase1", *small, "task.tokens_per_sample=64", "optimization.max_update=3",
                f"checkpoint.save_dir={p1}", f"hydra.run.dir={p1 / 'hydra'}"], cli_env)
    assert '"num_updates": "3"' in out1
    out2 = run(["fairseq-hydra-train", "--config-dir", str(ROOT / "configs" / "pretrain"), "--config-name",
                "phase2", *small, "optimization.max_update=2", f"checkpoint.save_dir={p2}",
                f"checkpoint.finetune_from_model={p1 / 'checkpoint_last.pt'}", f"hydra.run.dir={p2 / 'hydra'}"],
               cli_env)
    assert "loading pretrained model from" in out2 and "optimizer, lr scheduler, meters, dataloader will be reset" in out2
    s1 = torch.load(p1 / "checkpoint_last.pt", weights_only=True)
    s2 = torch.load(p2 / "checkpoint_last.pt", weights_only=True)
    assert s1["cfg"]["task"]["tokens_per_sample"] == 64 and s2["cfg"]["task"]["tokens_per_sample"] == 512
    assert s2["cfg"]["optimization"]["lr"] == [0.004] and s2["optimizer_history"][-1]["num_updates"] == 2
    assert s2["cfg"]["optimizer"]["_name"] == "nvlamb" and s2["cfg"]["optimization"]["clip_norm"] == 0.0
    assert s1["cfg"]["model"]["bf16_autocast"] is True and s2["cfg"]["model"]["bf16_autocast"] is True


def test_recipe_global_batches():
    from omegaconf import OmegaConf

    def load(name):
        return OmegaConf.load(ROOT / "configs" / "pretrain" / f"{name}.yaml")

    for name, (length, batch, lr, warmup, updates) in {
        "phase1": (128, 64000, 0.005, 2166, 95040), "phase2": (512, 30720, 0.004, 200, 7560),
        "base_phase1": (128, 64000, 0.005, 2166, 95040), "base_phase2": (512, 30720, 0.004, 200, 7560),
    }.items():
        cfg = load(name)
        assert cfg.task.tokens_per_sample == length
        assert cfg.dataset.batch_size * cfg.optimization.update_freq[0] * 8 == batch, name
        assert cfg.optimization.lr == [lr] and cfg.lr_scheduler.warmup_updates == warmup
        assert cfg.optimization.max_update == updates == cfg.lr_scheduler.total_num_update
        assert cfg.model.bf16_autocast is True and cfg.criterion._name == "bart_cross_entropy"  # as NVIDIA trains
    for phase in ("phase1", "phase2"):  # base files = the recipe's files with the base model
        large, base = load(phase), load("base_" + phase)
        assert large.model._name == "bart_large_preln" and base.model._name == "bart_base_preln"
        base.model._name = "bart_large_preln"
        assert base == large, phase
