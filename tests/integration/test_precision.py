"""bf16 autocast (CPU here; the same switch on GPUs) against fp32, with nvlamb keeping fp32 state."""
from __future__ import annotations

import pytest
import torch

from tests.integration.fairseq_run import fairseq_train, train_losses
from tests.integration.test_nvlamb_train import nvlamb_args

UPDATES = 30
# Stated tolerance: within 0.01 nats of fp32 at every update, 0.002 on average. Measured on
# the tiny model (nvlamb, 64 tokens): over 30 updates max gap 0.0002, mean 0.0001 (over 50: 0.0005, 0.0001;
# README, "Scaling out and precision").
MAX_GAP, MEAN_GAP = 0.01, 0.002


@pytest.fixture(scope="module")
def runs(data_dir, cli_env, tmp_path_factory):
    out = {}
    for name, extra in (("fp32", []), ("bf16", ["--bf16-autocast"])):
        save = tmp_path_factory.mktemp(name)
        out[name] = (train_losses(fairseq_train(nvlamb_args(data_dir, save, UPDATES, *extra), cli_env, exact=True)),
                     save)
    return out


def test_bf16_autocast_tracks_fp32(runs):
    fp32, bf16 = runs["fp32"][0], runs["bf16"][0]
    assert sorted(fp32) == sorted(bf16) == list(range(1, UPDATES + 1))
    gaps = [abs(fp32[u] - bf16[u]) for u in fp32]
    print(f"bf16 vs fp32 over {UPDATES} updates: max gap {max(gaps):.4f}, mean {sum(gaps) / len(gaps):.4f}")
    assert max(gaps) < MAX_GAP and sum(gaps) / len(gaps) < MEAN_GAP
    assert any(g > 0 for g in gaps), "bf16 autocast changed nothing: was it on?"
    assert bf16[UPDATES] < bf16[1] - 1.0  # and it trains


def test_bf16_run_keeps_fp32_weights_and_nvlamb_state(runs):
    state = torch.load(runs["bf16"][1] / "checkpoint_last.pt", weights_only=True)
    assert state["cfg"]["model"]["bf16_autocast"] is True
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    opt = state["last_optimizer_state"]["state"]
    assert opt and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in opt.values())


def test_autocast_runs_the_forward_in_bf16(data_dir):
    import user_dir  # noqa: F401
    from user_dir.bart_denoising import BartDenoisingTask
    from user_dir.bart_preln import BartPreln, BartPrelnConfig, bart_tiny_preln

    task = BartDenoisingTask.from_data(data_dir / "bin", tokens_per_sample=32)
    outs = {}
    for flag in (False, True):
        cfg = BartPrelnConfig(bf16_autocast=flag)
        bart_tiny_preln(cfg)
        torch.manual_seed(0)
        model = BartPreln.build_model(cfg, task).eval()
        src = torch.randint(4, 100, (2, 9))
        outs[flag] = model(src, torch.tensor([9, 9]), src)[0]
    assert outs[False].dtype == torch.float32 and outs[True].dtype == torch.bfloat16
    torch.testing.assert_close(outs[True].float(), outs[False], atol=0.1, rtol=0.05)
