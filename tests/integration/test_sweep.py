"""The ablation runner: a 2 x 2 tiny sweep (Pre-/Post-LN x a sane and a diverging learning rate),
killed after its first run and started again, then its CSV, table and plot."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SPEC = """
name: t2x2
description: "test: Pre-LN/Post-LN x learning rate"
config: pretrain/tiny
overrides:
  task.data: data/aclsum/bin
  optimizer._name: adam
  optimization.clip_norm: 0.0
  optimization.max_update: 8
  lr_scheduler.warmup_updates: 2
  lr_scheduler.total_num_update: 8
  dataset.max_tokens: 512
  dataset.validate_interval_updates: 8
  dataset.max_valid_steps: 2
  common.log_interval: 2
  checkpoint.save_interval_updates: 8
grid:
  model.post_ln: [false, true]
  optimization.lr: [[0.001], [1000.0]]   # 1000: deliberately diverging
"""


def sweep(spec: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sweep.py"), str(spec), "--out", str(out), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,  # SIGINT as a terminal's Ctrl-C (a test runner may ignore it)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_sweep_resumes_records_divergence_and_reports(tmp_path):
    spec = tmp_path / "t2x2.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "sweep"
    # 1. Start, and kill the whole sweep (runner and its fairseq run) once the first run has finished.
    proc = sweep(spec, out)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("runs/*/result.json")):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    first = list(out.glob("runs/*/result.json"))
    assert len(first) == 1, "the first run did not finish in time"
    time.sleep(2)  # the second run is under way
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first_mtime = first[0].stat().st_mtime
    first_record = json.loads(first[0].read_text())
    assert len(list(out.glob("runs/*/result.json"))) == 1

    # 2. Start again: the finished run is skipped, the other three run.
    proc = sweep(spec, out, "--jobs", "2")
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    assert "4 runs (1 finished before)" in log
    assert f"skip {first_record['label']}: finished" in log
    assert first[0].stat().st_mtime == first_mtime
    # the time left for the sweep, after each run but the last
    assert re.search(r"\[sweep\] 1 of 3 runs done, about \d+ (s|min) left", log), log
    assert "2 of 3 runs done, about " in log and "3 of 3 runs done" not in log
    assert len(list(out.glob("runs/*/result.json"))) == 4

    # 3. Results: the diverging learning rate is recorded as diverged, not a crash of the sweep.
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4
    status = {(r["model.post_ln"], r["optimization.lr"]): r["status"] for r in rows}
    assert status[("false", "0.001")] == status[("true", "0.001")] == "ok"
    assert status[("false", "1000.0")] == status[("true", "1000.0")] == "diverged"
    for r in rows:
        if r["status"] == "ok":
            assert float(r["final_train_loss"]) < 15 and float(r["final_valid_loss"]) < 15
    table = (out / "results.md").read_text()
    assert table.count("| diverged") == 2 and "| false | 0.001 | 1 |" in table
    # One figure, one panel per post_ln value, one training curve per run.
    import matplotlib.image

    img = matplotlib.image.imread(out / "t2x2.png")
    assert img.ndim == 3 and img.shape[1] > 800 and img[..., :3].std() > 0.05
    drawn = json.loads((out / "t2x2.json").read_text())
    assert sorted(drawn) == ["post_ln=false", "post_ln=true"]
    for panel in drawn.values():
        assert panel["lr=0.001 (train)"] >= 3 and "lr=1000.0 [diverged] (train)" in panel
    assert "runner overhead" in log



def test_a_stopped_run_is_not_recorded_and_leaves_nothing_running(tmp_path):
    """Ctrl-C (SIGINT to the group) and then SIGTERM to the runner alone, each while a run trains. Before:
    the Ctrl-C'd run was recorded as failed ("exit -2: KeyboardInterrupt"), so the next sweep skipped it,
    and after SIGTERM the runner died on the spot while its fairseq run trained on as an orphan."""
    from tests.helpers import processes_mentioning

    spec = tmp_path / "long.yaml"
    spec.write_text(SPEC.replace("max_update: 8", "max_update: 100000").replace("total_num_update: 8", "total_num_update: 100000")
                    .replace("[[0.001], [1000.0]]   # 1000: deliberately diverging", "[[0.001]]")
                    .replace("model.post_ln: [false, true]", "model.post_ln: [false]"))
    out = tmp_path / "sweep"

    def training(attempt: int) -> bool:  # that attempt's fairseq run has logged an update (the log keeps them all)
        return any("train_inner" in (log.read_text().split("# bart_ext sweep attempt") + [""])[attempt]
                   for log in out.glob("runs/*/train.log"))

    attempts = 0

    def stop(how) -> str:
        nonlocal attempts
        proc = sweep(spec, out)
        deadline = time.time() + 300
        attempts += 1
        while not training(attempts):
            assert time.time() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        how(proc.pid)
        log = proc.communicate(timeout=120)[0]
        assert processes_mentioning(str(out)) == [], log
        assert not list(out.glob("runs/*/result.json")), log
        assert "stopped, not recorded; the same command continues it" in log, log
        return log + f"\nrc={proc.returncode}"

    log = stop(lambda pid: os.killpg(pid, signal.SIGINT))  # a terminal's Ctrl-C
    assert log.endswith("rc=130") and "sweep.py: interrupted" in log, log
    log = stop(lambda pid: os.kill(pid, signal.SIGTERM))
    assert log.endswith("rc=143") and "sweep.py: stopped by SIGTERM" in log, log
    listed = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), str(spec), "--out", str(out), "--dry-run"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "1 run (0 finished before)" in listed.stdout and "would run post_ln=false" in listed.stdout, listed.stdout


def test_a_second_sweep_in_the_same_folder_is_refused(tmp_path):
    """Two sweeps with one --out would run the same unfinished runs at once into the same checkpoints."""
    from bart_ext.files import exclusive

    spec, out = tmp_path / "t2x2.yaml", tmp_path / "sweep"
    spec.write_text(SPEC)
    with exclusive(out / ".sweep.lock", "the test's sweep"):
        proc = sweep(spec, out)
        log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, log
    assert log.strip().splitlines()[-1].startswith(
        f"sweep.py: the sweep folder {out.resolve()} is in use by another process (pid {os.getpid()}, "), log
    assert not (out / "runs").exists()
    listed = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), str(spec), "--out", str(out), "--dry-run"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)  # a dry run only reads: not refused
    assert listed.returncode == 0 and "would run" in listed.stdout, listed.stdout + listed.stderr

def test_shipped_ablations_expand():
    from bart_ext.sweep import check_override_keys, expand, load_ablation

    counts = {}
    for path in sorted((ROOT / "configs" / "ablation").glob("*.yaml")):
        import yaml

        scales = list(yaml.safe_load(path.read_text()).get("scales") or {})
        assert "real" in scales
        for scale in (None, *scales):
            spec = load_ablation(path, scale)
            runs = expand(spec)
            assert len({r.key for r in runs}) == len(runs)
            check_override_keys(spec, runs)  # every key is one fairseq's config has (next test)
        counts[path.stem] = len(runs)
    assert counts == {"noise": 12, "nvlamb_vs_adam": 6, "preln_vs_postln": 6, "use_nvlamb": 4}
    # NVLAMB against Adam: lr x sqrt(k) and the same tokens (updates x update_freq) in every run.
    runs = expand(load_ablation(ROOT / "configs" / "ablation" / "nvlamb_vs_adam.yaml"))
    for r in runs:
        k = r.overrides["optimization.update_freq"][0]
        base = 0.03 if r.point["optimizer"] == "nvlamb" else 0.002
        assert r.overrides["optimization.lr"][0] == pytest.approx(base * k ** 0.5)
        assert r.overrides["optimization.max_update"] * k * 1024 == 81920
    # its small scale (the demo's model and shards): sequences of 64 x 32 per update, the schedule as long as the run
    for r in expand(load_ablation(ROOT / "configs" / "ablation" / "nvlamb_vs_adam.yaml", "small")):
        k = r.overrides["optimization.update_freq"][0]
        base = 0.006 if r.point["optimizer"] == "nvlamb" else 0.003
        assert r.overrides["optimization.lr"][0] == pytest.approx(base * k ** 0.5)
        assert r.overrides["optimization.max_update"] * k * 32 * 64 == 614400
        assert r.overrides["lr_scheduler.total_num_update"] == r.overrides["optimization.max_update"]
        assert r.overrides["model._name"] == "bart_small_preln" and r.overrides["task.data"] == "runs/demo/lddl"
    # noise's small scale: BART's two noises alone, together and neither, on the demo's pretraining, each fine-tuned
    # as the demo fine-tunes (its data, model, learning rate, updates) and summarized with its settings
    runs = expand(load_ablation(ROOT / "configs" / "ablation" / "noise.yaml", "small"))
    assert {(r.overrides["task.mask"], r.overrides["task.permute_sentences"]) for r in runs} == {
        (0.3, 1.0), (0.3, 0.0), (0.0, 1.0), (0.0, 0.0)}
    assert all(r.overrides["optimization.max_update"] == 1600 and "task.poisson_lambda" not in r.overrides
               for r in runs)
    small = load_ablation(ROOT / "configs" / "ablation" / "noise.yaml", "small")
    assert "judged downstream" in small["description"] and "Poisson" in load_ablation(
        ROOT / "configs" / "ablation" / "noise.yaml")["description"]
    down = small["downstream"]
    import scripts.demo as demo

    assert down["overrides"]["optimization.lr"] == [demo.FINETUNE_LR]
    assert down["overrides"]["optimization.max_update"] == demo.FINETUNE_UPDATES
    assert down["position_fill"] == {"trained": demo.SAMPLE_TOKENS, "fill": demo.POSITION_FILL}
    assert down["generate"]["preset"] == demo.GENERATION_PRESET
    assert down["generate"]["args"][1:3] == ["--min-len", str(demo.GENERATION_MIN_LEN)]
    # use_nvlamb's small scale is the demo's pretraining (configs/pretrain/small.yaml) for 300 updates
    demo = __import__("yaml").safe_load((ROOT / "configs" / "pretrain" / "small.yaml").read_text())
    for r in expand(load_ablation(ROOT / "configs" / "ablation" / "use_nvlamb.yaml", "small")):
        o = r.overrides
        assert o["optimization.lr"] == demo["optimization"]["lr"] and o["model._name"] == demo["model"]["_name"]
        assert o["dataset.batch_size"] == demo["dataset"]["batch_size"] and o["task.tokens_per_sample"] == 64
        assert o["optimization.max_update"] == o["lr_scheduler.total_num_update"] == 300


def test_lr_rule_and_token_budget_variants():
    from bart_ext.sweep import _apply_rules

    linear = {"lr_rule": {"axis": "optimization.update_freq", "rule": "linear"}, "token_budget": 65536}
    o = {"optimization.update_freq": [4], "optimization.lr": [0.001], "dataset.batch_size": 8,
         "task.tokens_per_sample": 512}  # batches by sequences (LDDL): tokens = 8 x 512
    _apply_rules(linear, o)
    assert o["optimization.lr"] == [0.004] and o["optimization.max_update"] == 65536 // (8 * 512 * 4)
    o = {"optimization.lr": 0.002, "dataset.max_tokens": 1 << 20}  # no axis value: k = 1; budget below one update
    _apply_rules(linear, o)
    assert o["optimization.lr"] == [0.002] and o["optimization.max_update"] == 1
    with pytest.raises(ValueError, match="lr_rule.rule must be sqrt or linear, not 'cube'"):
        _apply_rules({"lr_rule": {"axis": "optimization.update_freq", "rule": "cube"}},
                     {"optimization.update_freq": [2], "optimization.lr": [0.1]})


def test_printed_hydra_multirun_runs_each_job_into_its_own_directory(data_dir, tmp_path):
    """--hydra-multirun's command, run by a shell from the repository (hydra's basic launcher
    instead of SLURM's): every job trains on the data the spec names and saves in SWEEP_DIR/N."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from sweep import hydra_multirun

    from bart_ext.sweep import load_ablation

    spec_file = tmp_path / "t2.yaml"
    spec_file.write_text(SPEC.replace("name: t2x2", "name: t2").replace("optimization.max_update: 8", "optimization.max_update: 2")
                         .replace("  optimization.lr: [[0.001], [1000.0]]   # 1000: deliberately diverging\n", ""))
    spec = load_ablation(spec_file, None, {})
    cmd = hydra_multirun(spec, sweep_dir=str(tmp_path / "multirun"), launcher="")
    assert '"++task.data=$PWD/data/aclsum/bin"' in cmd and "checkpoint.save_dir=checkpoints" in cmd
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"], OMP_NUM_THREADS="2")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for job, post_ln in ((0, False), (1, True)):
        state = torch_load(tmp_path / "multirun" / str(job) / "checkpoints" / "checkpoint_last.pt")
        assert state["cfg"]["model"]["post_ln"] is post_ln


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def test_misspelt_override_keys_are_refused_before_any_run(tmp_path):
    """The runner passes overrides with hydra's ++, which adds an unknown key instead of refusing it: a
    sweep with --set optimization.max_updates=3 ran every run with the default max_update, and a typo in
    the ablation file's grid or downstream block went the same way. Each such key is now named, with the
    field it probably meant, before anything runs; a component's fields are those of the component the
    run names (model.post_ln is bart_preln's, not fairseq's transformer's)."""
    from bart_ext.sweep import SweepConfigError, unknown_override_keys
    from scripts.sweep import main

    spec = tmp_path / "t2x2.yaml"
    spec.write_text(SPEC)
    with pytest.raises(SweepConfigError) as err:
        main([str(spec), "--out", str(tmp_path / "sweep"), "--set", "optimization.max_updates=3",
              "--set", "optimiser.lr=[0.1]"])
    assert ("optimization.max_updates: optimization (OptimizationConfig) has no field 'max_updates' (did you mean "
            "optimization.max_update?)") in str(err.value)
    assert "optimiser.lr: fairseq's config has no group 'optimiser' (did you mean optimizer?)" in str(err.value)
    assert not (tmp_path / "sweep").exists()
    assert unknown_override_keys("pretrain/tiny", {"model.post_ln": True, "task.tokens_per_sample": 64,
                                                   "optimizer._name": "adam", "optimizer.adam_betas": "(0.9,0.98)",
                                                   "hydra.run.dir": "x", "common.seed": 2}) == []
    assert unknown_override_keys("pretrain/tiny", {"optimizer.lamb_betas": [0.9, 0.99], "optimizer._name": "adam"}) == [
        "optimizer.lamb_betas: optimizer 'adam' (FairseqAdamConfig) has no field 'lamb_betas' (did you mean "
        "optimizer.adam_betas?)"]
    spec.write_text(SPEC + DOWNSTREAM.replace("optimization.max_update: 3", "optimization.max_update: 3\n    task.truncate_src: true"))
    with pytest.raises(SweepConfigError, match=r"downstream: task.truncate_src: task 'bart_summarization' "
                                               r"\(BartSummarizationConfig\) has no field 'truncate_src' "
                                               r"\(did you mean task.truncate_source\?\)"):
        main([str(spec), "--out", str(tmp_path / "sweep")])


def test_missing_data_is_named_before_any_run(tmp_path):
    """A scale whose data is not prepared (the small scale needs the demo's LDDL shards) stops at
    once naming the folder, instead of starting every run to fail alike; --dry-run still lists."""
    from scripts.sweep import main

    spec = tmp_path / "t2x2.yaml"
    spec.write_text(SPEC.replace("task.data: data/aclsum/bin", f"task.data: {tmp_path / 'nodata'}"))
    with pytest.raises(SystemExit, match=rf"task.data {tmp_path}/nodata not found: prepare it as the comment"):
        main([str(spec), "--out", str(tmp_path / "sweep")])
    assert not (tmp_path / "sweep").exists()
    assert main([str(spec), "--out", str(tmp_path / "sweep"), "--dry-run"]) == {}
    assert not (tmp_path / "sweep").exists()  # a dry run writes nothing


DOWNSTREAM = """
downstream:
  config: finetune/aclsum
  position_fill: {trained: 64, fill: tail-mean}
  overrides:
    task.data: data/aclsum_summ/bin
    model._name: bart_tiny_preln
    optimization.max_update: 3
    lr_scheduler.warmup_updates: 1
    lr_scheduler.total_num_update: 3
    dataset.max_tokens: 2048
    dataset.validate_interval_updates: 3
    dataset.max_valid_steps: 2
    common.log_interval: 1
  generate: {preset: xsum, subset: test, args: [--cpu, --min-len, 2, --max-len-b, 6, --beam, 2]}
"""


def test_downstream_fine_tunes_each_finished_run_and_scores_it(data_dir, tmp_path):
    """A finished sweep gains a downstream block: a second start fine-tunes each finished run's
    checkpoint (position rows filled), summarizes the test papers and adds the fine-tuned loss and
    ROUGE with intervals to the tables and a bar panel to the plot; a third start redoes nothing."""
    base = (SPEC.replace("name: t2x2", "name: t1").replace("optimization.max_update: 8", "optimization.max_update: 2")
            .replace("  optimization.lr: [[0.001], [1000.0]]   # 1000: deliberately diverging\n", "")
            .replace("model.post_ln: [false, true]", "model.post_ln: [false]"))
    spec, out = tmp_path / "t1.yaml", tmp_path / "sweep"
    spec.write_text(base)
    proc = sweep(spec, out)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    (run_dir,) = [p.parent for p in out.glob("runs/*/result.json")]
    assert not (run_dir / "downstream").exists() and "fine-tuned" not in (out / "results.md").read_text()

    spec.write_text(base + DOWNSTREAM)
    proc = sweep(spec, out)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    assert "1 run (1 finished before)" in log and "finished (ok); downstream to do" in log
    record = json.loads((run_dir / "downstream" / "result.json").read_text())
    assert record["status"] == "ok", record
    assert record["finetune"]["updates"] == 3 and record["summaries"] == 100
    for m in ("rouge1", "rouge2", "rougeL"):
        cell = record["rouge"][m]
        assert 0 <= cell["low"] <= cell["f1"] <= cell["high"] <= 100
    # it started from the pretrained checkpoint, its position rows beyond 64 filled
    train_log = (run_dir / "downstream" / "train.log").read_text()
    assert f"checkpoint.finetune_from_model={run_dir / 'downstream' / 'start.pt'}" in train_log
    assert (run_dir / "downstream" / "start.pt").exists()
    row = next(csv.DictReader(open(out / "results.csv")))
    assert row["downstream_status"] == "ok"
    assert float(row["rouge1"]) == pytest.approx(record["rouge"]["rouge1"]["f1"], abs=1e-4)
    assert float(row["finetune_valid_loss"]) == pytest.approx(record["finetune"]["final_valid"], abs=1e-4)
    md = (out / "results.md").read_text()
    r1 = record["rouge"]["rouge1"]
    assert f"{r1['f1']:.2f} [{r1['low']:.2f}, {r1['high']:.2f}]" in md and "fine-tuned valid loss" in md
    drawn = json.loads((out / "t1.json").read_text())
    assert any(title.startswith("downstream ROUGE") for title in drawn)

    mtime = (run_dir / "downstream" / "result.json").stat().st_mtime
    proc = sweep(spec, out)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert "downstream to do" not in log and "fine-tuning with" not in log
    assert (run_dir / "downstream" / "result.json").stat().st_mtime == mtime


def test_downstream_blocks_are_checked(tmp_path):
    from bart_ext.sweep import load_ablation

    spec = tmp_path / "t.yaml"
    for block, message in (
        ("downstream: {overrides: {}}", "missing field 'config'"),
        ("downstream: {config: finetune/nothing}", "finetune/nothing.yaml not found"),
        ("downstream: {config: finetune/aclsum, epochs: 3}", "unknown field"),
        ("downstream: {config: finetune/aclsum, position_fill: {trained: 64, fill: zeros}}", "position_fill must be"),
        ("downstream: {config: finetune/aclsum, generate: {preset: xsum}}", "set overrides\\['task.data'\\]"),
    ):
        spec.write_text(SPEC + block + "\n")
        with pytest.raises(ValueError, match=message):
            load_ablation(spec)
    # a scale drops an axis with null, and brings its own downstream block
    spec.write_text(SPEC + "scales:\n  s:\n    grid: {optimization.lr: null}\n"
                    "    downstream: {config: finetune/aclsum}\n")
    loaded = load_ablation(spec, "s")
    assert list(loaded["grid"]) == ["model.post_ln"] and loaded["downstream"]["config"] == "finetune/aclsum"
    assert load_ablation(spec).get("downstream") is None
    spec.write_text(SPEC + "scales:\n  s:\n    grid: {optimization.lr: null, model.post_ln: null}\n")
    with pytest.raises(ValueError, match="drops every grid axis"):
        load_ablation(spec, "s")


@pytest.mark.parametrize("seeds", [[1], [1, 2]])
def test_one_axis_one_seed_sweep_is_plotted_in_one_panel(tmp_path, seeds):
    """One run per value of the only axis: one loss panel holding every run, and the downstream bars take
    the same short labels (so a run has one colour in both panels); with two seeds, a panel per value."""
    from bart_ext.sweep import Result, expand, load_ablation
    from scripts.sweep import figure

    spec_path = tmp_path / "one.yaml"
    spec_path.write_text(SPEC.replace("name: t2x2", "name: one").split("grid:")[0]
                         + f"grid:\n  task.mask: [0.0, 0.3]\nseeds: {seeds}\n")
    spec = load_ablation(spec_path)
    runs = expand(spec)
    assert len(runs) == 2 * len(seeds)
    downstream = {}
    for i, r in enumerate(runs):
        d = tmp_path / "runs" / r.dirname
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"result": Result(status="diverged" if i == 1 else "ok").__dict__}))
        lines = [f"[t][train_inner][INFO] - {json.dumps({'loss': 10 - u / 10 - i, 'num_updates': u})}" for u in (2, 4, 6)]
        (d / "train.log").write_text("\n".join(lines) + "\n")
        downstream[r.key] = {"rouge": {m: {"f1": 20.0 + i, "low": 19.0 + i, "high": 21.0 + i}
                                       for m in ("rouge1", "rouge2", "rougeL")}}
    figure(spec, runs, tmp_path, tmp_path / "runs", downstream)
    drawn = json.loads((tmp_path / "one.json").read_text())
    if seeds == [1]:
        assert list(drawn) == ["mask", "downstream ROUGE (fine-tuned)"]
        assert drawn["mask"] == {"0.0 (train)": 3, "0.0 (valid)": 0, "0.3 [diverged] (train)": 3,
                                 "0.3 [diverged] (valid)": 0}
        assert list(drawn["downstream ROUGE (fine-tuned)"]) == ["0.0", "0.3 [diverged]"]
    else:
        assert list(drawn) == ["mask=0.0", "mask=0.3", "downstream ROUGE (fine-tuned)"]
        assert set(drawn["mask=0.0"]) == {"seed=1 (train)", "seed=1 (valid)", "seed=2 [diverged] (train)",
                                          "seed=2 [diverged] (valid)"}
        assert len(drawn["downstream ROUGE (fine-tuned)"]) == 4  # full labels: mask and seed


def test_an_axis_with_one_value_is_left_out_of_the_curve_labels(tmp_path):
    """Two axes and one seed: the panels' curves are named by the second axis alone, not `..., seed=1`."""
    from bart_ext.sweep import Result, expand, load_ablation
    from scripts.sweep import figure

    spec_path = tmp_path / "two.yaml"
    spec_path.write_text(SPEC.replace("name: t2x2", "name: two").split("grid:")[0]
                         + "grid:\n  task.mask: [0.0, 0.3]\n  model.post_ln: [false, true]\nseeds: [1]\n")
    spec = load_ablation(spec_path)
    runs = expand(spec)
    assert all(r.point["seed"] == "1" for r in runs) and len(runs) == 4
    for r in runs:
        d = tmp_path / "runs" / r.dirname
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"result": Result(status="ok").__dict__}))
        (d / "train.log").write_text(f"[t][train_inner][INFO] - {json.dumps({'loss': 9.0, 'num_updates': 2})}\n")
    figure(spec, runs, tmp_path, tmp_path / "runs")
    drawn = json.loads((tmp_path / "two.json").read_text())
    assert list(drawn) == ["mask=0.0", "mask=0.3"]
    for panel in drawn.values():
        assert set(panel) == {"post_ln=false (train)", "post_ln=false (valid)", "post_ln=true (train)",
                              "post_ln=true (valid)"}


def test_a_scales_sweep_has_its_own_folder(capsys):
    """`--scale small` writes under runs/sweeps/NAME_small, so the default scale's tables and plot are not
    overwritten; --dry-run creates nothing."""
    from scripts.sweep import main

    assert main(["noise", "--scale", "small", "--dry-run"]) == {}
    assert str(ROOT / "runs" / "sweeps" / "noise_small") in capsys.readouterr().out
    assert main(["noise", "--dry-run"]) == {}
    out = capsys.readouterr().out
    assert re.search(rf"12 runs .* -> {re.escape(str(ROOT / 'runs' / 'sweeps' / 'noise'))}(;|\n)", out), out
