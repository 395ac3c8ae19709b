"""The demo's run folder: an interrupted demo with the same settings is continued, anything else
starts anew (scripts/demo.py, Progress); a resumed run's appended log reads as one run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bart_ext.curves import read_log
from scripts.demo import PROGRESS, Progress, print_finished

SETTINGS = {"pretrain_updates": 1400, "finetune_updates": 100, "small": False, "commit": "abc"}


def interrupted(run: Path, settings: dict = SETTINGS, done=("lddl",), seconds: float = 42.0) -> Path:
    run.mkdir(parents=True)
    (run / "lddl").mkdir()
    (run / "lddl" / "shard-0.parquet").write_bytes(b"shard")
    (run / PROGRESS).write_text(json.dumps({"settings": settings, "done": list(done), "seconds": seconds}))
    return run


def test_a_new_folder_records_its_settings(tmp_path):
    run = tmp_path / "a" / "run"
    progress = Progress.open(run, SETTINGS, fresh=False)
    assert progress.done == [] and progress.seconds == 0
    saved = json.loads((run / PROGRESS).read_text())
    assert saved["settings"] == SETTINGS and saved["done"] == [] and saved["seconds"] >= 0
    progress.finish("lddl")
    assert json.loads((run / PROGRESS).read_text())["done"] == ["lddl"]
    progress.close()
    saved = json.loads((run / PROGRESS).read_text())
    assert saved["finished"] is True and saved["settings"] == SETTINGS and saved["done"] == ["lddl"]


def test_an_interrupted_demo_with_the_same_settings_is_continued(tmp_path, capsys):
    run = interrupted(tmp_path / "run", done=("lddl", "pretrain"))
    progress = Progress.open(run, dict(SETTINGS), fresh=False)
    assert progress.done == ["lddl", "pretrain"] and progress.seconds == 42.0
    assert (run / "lddl" / "shard-0.parquet").read_bytes() == b"shard"  # nothing removed
    assert progress.elapsed() >= 42.0
    assert "continuing the interrupted demo" in capsys.readouterr().out


def test_other_settings_a_finished_demo_fresh_or_an_unreadable_record_start_anew(tmp_path, capsys):
    cases = {
        "other settings": (lambda run: None, {**SETTINGS, "finetune_updates": 50}, False),
        "another commit": (lambda run: None, {**SETTINGS, "commit": "def"}, False),
        "finished": (lambda run: (run / "summary.json").write_text("{}"), SETTINGS, False),
        "fresh": (lambda run: None, SETTINGS, True),
        "unreadable": (lambda run: (run / PROGRESS).write_text("{not json"), SETTINGS, False),
        "no record (an older demo)": (lambda run: (run / PROGRESS).unlink(), SETTINGS, False),
    }
    for name, (change, settings, fresh) in cases.items():
        run = interrupted(tmp_path / name.replace(" ", "_"))
        change(run)
        progress = Progress.open(run, settings, fresh=fresh)
        assert progress.done == [] and progress.seconds == 0, name
        assert not (run / "lddl").exists() and not (run / "summary.json").exists(), name
        assert json.loads((run / PROGRESS).read_text())["settings"] == settings, name
    out = capsys.readouterr().out
    assert "other settings (finetune_updates)" in out and "other settings (commit)" in out


def finished(run: Path, settings: dict = SETTINGS) -> Path:
    """A run folder as a finished demo leaves it: its record marked finished, and summary.json."""
    interrupted(run, settings, done=("lddl", "pretrain", "finetune", "finetune_scratch"), seconds=1234.0)
    record = json.loads((run / PROGRESS).read_text())
    (run / PROGRESS).write_text(json.dumps({**record, "finished": True}))
    table = lambda r: {m: {"mean": r + i, "low": r + i - 1, "high": r + i + 1} for i, m in enumerate(("rouge1", "rouge2", "rougeL"))}
    (run / "summary.json").write_text(json.dumps({
        "rouge": table(30.0), "rouge_scratch": table(10.0), "rouge_lead1": table(20.0), "rouge_lead3": table(40.0),
        "distinct_summaries": 99, "distinct_summaries_scratch": 7, "masked_token_accuracy": 0.215,
        "unmasked_token_accuracy": 0.911, "copy_masked_token_accuracy": 0.04, "copy_unmasked_token_accuracy": 0.88}))
    return run


def test_a_finished_demo_with_the_same_settings_prints_its_results_again(tmp_path, capsys):
    run = finished(tmp_path / "run")
    progress = Progress.open(run, dict(SETTINGS), fresh=False)
    assert progress.finished and progress.seconds == 1234.0
    assert (run / "lddl" / "shard-0.parquet").read_bytes() == b"shard" and (run / "summary.json").exists()
    assert "has finished with these settings and this code (1234s)" in capsys.readouterr().out
    summary = print_finished(run)
    out = capsys.readouterr().out
    assert summary["distinct_summaries"] == 99
    assert "  pretrained      30.00 [29.00, 31.00]  31.00 [30.00, 32.00]  32.00 [31.00, 33.00]        99" in out
    assert "  from scratch    10.00 [ 9.00, 11.00]" in out and out.rstrip().endswith(str(run / "demo.png"))
    assert "masked tokens 21.5% (copy baseline 4.0%), unmasked tokens 91.1% (copy baseline 88.0%)" in out


def test_a_finished_demo_with_other_settings_or_fresh_starts_anew(tmp_path, capsys):
    for name, settings, fresh in (("other", {**SETTINGS, "commit": "def"}, False), ("fresh", SETTINGS, True)):
        run = finished(tmp_path / name)
        progress = Progress.open(run, settings, fresh=fresh)
        assert not progress.finished and progress.done == [], name
        assert not (run / "summary.json").exists() and not (run / "lddl").exists(), name
    assert "a finished demo in" in capsys.readouterr().out


def record(tag: str, **fields) -> str:
    return f"[2026-12-04 21:09:20,439][{tag}][INFO] - {json.dumps({k: str(v) for k, v in fields.items()})}\n"


def test_read_log_of_a_resumed_run_keeps_the_later_records(tmp_path):
    # interrupted at update 30 after a checkpoint at 20; the resumed run logs 30 and 40 again
    log = tmp_path / "pretrain.log"
    log.write_text(record("train_inner", num_updates=10, loss=9.0) + record("train_inner", num_updates=20, loss=8.0)
                   + record("valid", valid_num_updates=20, valid_loss=8.5) + record("train_inner", num_updates=30, loss=7.9)
                   + "\n# bart_ext demo: resumed at 2026-12-04 21:10:00\n"
                   + record("train_inner", num_updates=30, loss=7.0) + record("train_inner", num_updates=40, loss=6.0)
                   + record("valid", valid_num_updates=40, valid_loss=6.5))
    curves = read_log(log)
    assert curves.train == [(10, 9.0), (20, 8.0), (30, 7.0), (40, 6.0)]
    assert curves.valid == [(20, 8.5), (40, 6.5)]


def test_the_recorded_code_version_changes_with_uncommitted_work(tmp_path, monkeypatch):
    """A demo interrupted, then the code edited (not committed): the version differs, so it starts anew."""
    import subprocess

    import scripts.demo as demo

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "model.py").write_text("a = 1\n")
    git("add", "model.py")
    git("commit", "-q", "-m", "one")
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    clean = demo.code_version()
    assert len(clean) == 40 and "+" not in clean
    (tmp_path / "model.py").write_text("a = 2\n")
    edited = demo.code_version()
    assert edited.startswith(clean + "+dirty-")
    (tmp_path / "model.py").write_text("a = 3\n")
    assert demo.code_version() not in (clean, edited)
    (tmp_path / "model.py").write_text("a = 1\n")
    assert demo.code_version() == clean
    (tmp_path / "new_kernel.c").write_text("int x;\n")  # a new file counts too
    assert demo.code_version().startswith(clean + "+dirty-")


def test_train_lines_say_how_long_the_stage_has_left_at_the_pace_since_the_first_line():
    from scripts.demo import train_progress

    now = iter([0.0, 30.0, 40.0, 50.0, 1030.0, 1040.0])  # start-up 30 s, then 1 s an update
    show = train_progress(1000, clock=lambda: next(now))
    first = show(record("train_inner", num_updates=10, loss=9.0, wps=100))
    assert first.startswith("  train  update    10/1000 (  1%)  loss 9.000  100 tokens/s     30s")
    assert "left" not in first  # no pace yet
    assert show(record("train_inner", num_updates=20, loss=8.0, wps=100)).endswith("40s, 16 min left")  # 980 s
    assert show(record("train_inner", num_updates=30, loss=8.0, wps=100)).endswith("50s, 16 min left")
    assert show(record("train_inner", num_updates=990, loss=2.0, wps=100)).endswith("1030s, 10 s left")
    assert show(record("train_inner", num_updates=1000, loss=2.0, wps=100)).endswith("1040s")
    assert show(record("valid", valid_num_updates=1000, valid_loss=2.5)) == "  valid  update  1000  loss 2.500"
    # fairseq's json log writes numbers as strings without trailing zeros: one width for the column
    assert "loss 2.800  9,533 tokens/s" in train_progress(1000, clock=lambda: 0.0)(
        record("train_inner", num_updates=10, loss="2.8", wps="9533.2"))


def test_settings_are_checked_before_anything_runs(tmp_path, capsys):
    """--pretrain-updates 0 stopped fairseq after the data steps; --finetune-updates -1 and --finetune-lr 0
    went through minutes of pretraining first. Each is refused at once, and nothing is written."""
    import pytest

    from scripts.demo import main

    for args, said in ((["--pretrain-updates", "0"], "--pretrain-updates 0: expected at least 1"),
                       (["--finetune-updates", "-1"], "--finetune-updates -1: expected at least 1"),
                       (["--finetune-lr", "0"], "--finetune-lr 0.0: expected a positive learning rate"),
                       (["--bpe-merges", "60000"], "--bpe-merges 60000: expected 0 (GPT-2's full BPE) to 50000"),
                       (["--examples", "-1"], "--examples -1: expected at least 0")):
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--run-dir", str(tmp_path / "run")])
        assert exit_.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_runs_side_by_side_log_print_and_stop_together(tmp_path, capsys):
    """The demo's two fine-tunings run at once (stream_together): each line goes to its own log, the
    shown ones are printed under their label, exit codes come back in order, each run's threads are
    set; and when the demo is interrupted as one ends, the one still running is stopped."""
    import sys
    import time

    from scripts.demo import labelled, stream_together

    def job(name: str, code: str) -> tuple:
        return [sys.executable, "-c", code], tmp_path / f"{name}.log", labelled(name, lambda line: line if "show" in line else None), False

    talk = "import os, sys; print('show threads', os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS']); print('quiet')"
    ended = []
    rcs = stream_together([job("a", talk), job("b", talk + "; sys.exit(3)")], threads=1, on_exit=lambda i, rc: ended.append(i))
    assert rcs == [0, 3] and sorted(ended) == [0, 1]
    for name in ("a", "b"):
        assert (tmp_path / f"{name}.log").read_text() == "show threads 1 1\nquiet\n"
    out = capsys.readouterr().out.splitlines()
    assert sorted(out) == ["  a            show threads 1 1", "  b            show threads 1 1"]

    def interrupt(i: int, rc: int) -> None:
        raise KeyboardInterrupt

    slow = "import time; print('show started', flush=True); time.sleep(60); print('show finished')"
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        stream_together([job("fast", "print('show done')"), job("slow", slow)], on_exit=interrupt)
    assert time.time() - t0 < 30  # the sleeping one was stopped, not waited for
    assert (tmp_path / "fast.log").read_text() == "show done\n"
    assert "show finished" not in (tmp_path / "slow.log").read_text()


def test_a_second_demo_in_the_same_folder_is_refused_before_it_touches_it(tmp_path):
    """While one demo runs in a folder, another there (a second terminal, a rerun while an old one is
    still going) would resume the same steps at once: it is refused, naming the folder and the pid."""
    import os
    import subprocess
    import sys

    from bart_ext.files import exclusive

    root, run = Path(__file__).resolve().parents[2], tmp_path / "run"
    with exclusive(tmp_path / ".run.lock", "the test's demo"):
        proc = subprocess.run([sys.executable, str(root / "scripts" / "demo.py"), "--small", "--run-dir", str(run)],
                              cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"demo.py: the demo's run folder {run} is in use by another process (pid {os.getpid()}, "), proc.stderr
    assert not run.exists()
