"""The scripts' entry point: errors that name their input print one line, anything else keeps its
traceback."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bart_ext.cli import names_its_input, run
from bart_ext.lddl_data import ShardError
from tests import launcher

ROOT = Path(__file__).resolve().parents[2]


def _raise(err: BaseException):
    def main():
        raise err
    return main


def test_errors_that_name_their_input_become_one_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/prepare.py"])
    monkeypatch.delenv("BART_EXT_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run(_raise(FileNotFoundError("data/x/dict.txt not found")))
    assert exit_.value.code == "prepare.py: data/x/dict.txt not found"
    with pytest.raises(SystemExit, match=r"^prepare.py: shard.parquet: bad$"):
        run(_raise(ShardError("shard.parquet: bad")))
    assert not names_its_input(KeyError("x")) and not names_its_input(ValueError("x"))
    with pytest.raises(KeyError):  # not ours and not a missing file: a bug, with its traceback
        run(_raise(KeyError("x")))
    monkeypatch.setenv("BART_EXT_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        run(_raise(FileNotFoundError("kept")))


def test_a_script_prints_one_line_and_exits_1(tmp_path):
    proc = launcher.run([sys.executable, str(ROOT / "scripts" / "show_noise.py"), "--data", str(tmp_path)], timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"show_noise.py: {tmp_path}/dict.txt not found")


def test_count_params_prints_the_presets_and_refuses_a_dictionary_below_its_specials():
    """count_params.py --dict-size 0 printed counts "(dictionary of 4 entries)": the size asked was not
    the size counted."""
    def count(size):
        return launcher.run([sys.executable, str(ROOT / "scripts" / "count_params.py"), "--dict-size", str(size)],
                            timeout=300)

    proc = count(0)
    assert proc.returncode == 2 and proc.stderr.strip().endswith(
        "--dict-size 0: a fairseq dictionary has at least its 4 special entries"), proc.stderr
    proc = count(50265)
    # bart_base_preln at BART's dictionary, against the sum of its shapes: layers (attention, feed-forward,
    # LayerNorms; the decoder's cross-attention), final LayerNorms, tokens, positions (1,024 + 2 rows each)
    rows = {line.split()[0]: int(line.split()[-2].replace(",", "")) for line in proc.stdout.splitlines()[1:-1]}
    d, layer = 768, 4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 2 * 2 * 768
    encoder = 6 * layer + 2 * 768  # + final LayerNorm
    decoder = 6 * (layer + 4 * (768 * 768 + 768) + 2 * 768) + 2 * 768
    embeddings = 50265 * d + 2 * (1024 + 2) * d + 2 * 2 * d  # tokens, two position tables, two embedding LNs
    assert proc.returncode == 0 and rows["bart_base_preln"] == encoder + decoder + embeddings, proc.stdout


@pytest.mark.parametrize("script", ["bench_noise.py", "bench_train.py"])
def test_benchmarks_of_indexed_data_refuse_lddl_shards(script, tmp_path):
    """Both time fairseq-preprocess data (fairseq's DenoisingDataset reads nothing else); on the demo's LDDL
    folder they stopped with "'LDDLDataset' object has no attribute 'samples'" and a bare NotImplementedError."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "shard-0.parquet").write_bytes(b"")
    proc = launcher.run([sys.executable, str(ROOT / "scripts" / script), "--data", str(tmp_path)], timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"--data {tmp_path} holds LDDL shards; {script} ")


@pytest.mark.parametrize("script, args, said", [
    ("lddl_preprocess", ["--aclsum", "--target-seq-length", "2"], "--target-seq-length 2: expected at least 3"),
    ("lddl_preprocess", ["--aclsum", "--workers", "0"], "--workers 0: expected at least 1"),
    ("lddl_preprocess", ["--aclsum", "--num-shards", "0"], "--num-shards 0: expected at least 1"),
    ("roles_experiment", ["--updates", "0"], "--updates 0: expected at least 1"),
    ("roles_experiment", ["--rounds", "0"], "--rounds 0: expected at least 1"),
    ("classify", ["--path", "x.pt", "--batch-size", "0"], "--batch-size 0: expected at least 1"),
    ("generate", ["data", "--preset", "xsum", "--path", "x.pt", "--batch-size", "0"], "--batch-size 0: expected at least 1"),
    ("prepare_summarization", ["--workers", "0"], "--workers 0: expected at least 1"),
    ("prepare_data", ["--workers", "0"], "--workers 0: expected at least 1"),
    ("rouge", ["hyp", "ref", "--bootstrap", "0"], "--bootstrap 0: expected at least 1"),
    ("sweep", ["preln_vs_postln", "--jobs", "0"], "--jobs 0: expected at least 1"),
    ("show_noise", ["--n", "0"], "--n 0: expected at least 1"),
])
def test_numeric_options_are_checked_before_anything_runs(script, args, said, tmp_path, capsys):
    """lddl_preprocess.py wrote shards for --target-seq-length 2 (and printed "--tokens-per-sample 2" to train
    with), waited forever on a dask cluster of --workers 0 and stopped with a traceback on --num-shards 0;
    roles_experiment.py fine-tuned into a failure with --updates 0; classify.py (batch size), rouge.py
    (bootstrap) and prepare_summarization.py (workers) stopped with tracebacks on a 0. Each is refused at
    once, nothing written."""
    import importlib

    main = importlib.import_module(f"scripts.{script}").main
    out = {"roles_experiment": ["--run-dir", str(tmp_path / "out")], "generate": ["--results-path", str(tmp_path / "out")],
           "classify": [], "rouge": [], "show_noise": []}.get(script, ["--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        main([*args, *out])
    assert exit_.value.code == 2 and capsys.readouterr().err.strip().endswith(said)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cuda,native,emulated", [(False, False, True), (False, True, False), (False, None, False),
                                                  (True, False, False)])
def test_bf16_counts_as_emulated_only_on_a_cpu_whose_flags_lack_it(monkeypatch, cuda, native, emulated):
    import torch

    from bart_ext import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda: native)
    assert hardware.bf16_emulated() is emulated


def test_bf16_benchmarks_leave_out_emulated_bf16(monkeypatch, capsys):
    """On an AVX2-only CPU, bench_loss.py's default bf16 rows took minutes a call (emulated bf16) and
    bench_attention.py measured emulation: the first runs fp32 only and the second nothing, each saying
    why; bf16 named explicitly still runs."""
    from scripts import bench_attention, bench_loss

    monkeypatch.setattr(bench_loss, "SHAPES", {"mid": (16, 8, 40)})
    for module in (bench_loss, bench_attention):
        monkeypatch.setattr(module, "bf16_emulated", lambda: True)
    monkeypatch.setattr(sys, "argv", ["bench_loss.py", "--rounds", "1", "--shapes", "mid"])
    bench_loss.main()
    out = capsys.readouterr().out
    assert "bf16 left out: this CPU has no bf16 matrix instructions" in out
    assert [line.split()[6] for line in out.splitlines() if line.startswith("  mid")] == ["fp32"]
    monkeypatch.setattr(sys, "argv", ["bench_loss.py", "--rounds", "1", "--shapes", "mid", "--dtypes", "fp32,bf16"])
    bench_loss.main()
    out = capsys.readouterr().out
    assert "left out" not in out and [line.split()[6] for line in out.splitlines() if line.startswith("  mid")] == [
        "fp32", "bf16"]
    monkeypatch.setattr(bench_attention, "bench_calls", lambda reps: pytest.fail("ran with emulated bf16"))
    monkeypatch.setattr(sys, "argv", ["bench_attention.py"])
    bench_attention.main()
    assert "nothing run (--anyway to run it)" in capsys.readouterr().out
    from scripts import bench_bf16_gemm

    monkeypatch.setattr(bench_bf16_gemm, "bf16_emulated", lambda: True)
    monkeypatch.setattr(bench_bf16_gemm, "bench_products", lambda reps: pytest.fail("ran with emulated bf16"))
    monkeypatch.setattr(sys, "argv", ["bench_bf16_gemm.py"])
    bench_bf16_gemm.main()
    out = capsys.readouterr().out
    assert "nothing run (--anyway to run it)" in out or "does not export" in out


# A script as the sweep and the demo's generation are: its child process waited for in a worker thread.
CHILD_IN_A_THREAD = """
import signal, sys
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, {root!r})
from bart_ext.cli import children_stopped_on_interrupt, run, run_child

signal.signal(signal.SIGINT, signal.default_int_handler)  # as under a terminal (a test runner may ignore it)
SLEEPER = [sys.executable, "-c", "import os, time; open({pid_file!r}, 'w').write(str(os.getpid())); time.sleep(300)"]


def main():
    with ThreadPoolExecutor(1) as pool, children_stopped_on_interrupt():
        pool.submit(run_child, SLEEPER).result()


run(main)
"""


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_with_child(tmp_path, ignore_sighup: bool = False):
    import signal
    import subprocess
    import time

    pid_file = tmp_path / "child.pid"
    script = tmp_path / "script.py"
    script.write_text(CHILD_IN_A_THREAD.format(root=str(ROOT), pid_file=str(pid_file)))
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=(lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if ignore_sighup else None)
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.05)
    return proc, int(pid_file.read_text())


@pytest.mark.parametrize("signame, status, line", [("SIGTERM", 143, "script.py: stopped by SIGTERM"),
                                                   ("SIGHUP", 129, "script.py: stopped by SIGHUP"),
                                                   ("SIGINT", 130, "script.py: interrupted")])
def test_a_signal_to_the_script_alone_stops_the_children_its_threads_wait_for(tmp_path, signame, status, line):
    """`kill PID` (or a scheduler's cancel, a closed terminal) reaches the script, not its children: before,
    SIGTERM and SIGHUP ended it on the spot and a SIGINT left the main thread waiting, and the child in
    the worker thread ran on (the sweep's training runs kept writing into their folders as orphans)."""
    import os
    import signal

    proc, child = _start_with_child(tmp_path)
    assert _running(child)
    os.kill(proc.pid, getattr(signal, signame))
    assert proc.wait(timeout=40) == status
    assert proc.stderr.read().strip().splitlines()[-1] == line
    assert not _running(child)


def test_an_ignored_sighup_stays_ignored(tmp_path):
    """Under nohup (SIGHUP ignored) a closed terminal must not stop the script."""
    import os
    import signal
    import time

    proc, child = _start_with_child(tmp_path, ignore_sighup=True)
    os.kill(proc.pid, signal.SIGHUP)
    time.sleep(1.5)
    assert proc.poll() is None and _running(child)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=40) == 143 and not _running(child)


def test_run_puts_the_signal_handlers_back():
    """Scripts' mains are also called in-process (tests, the demo's generation): run() must not leave
    its SIGTERM/SIGHUP handlers behind."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    seen = {}
    run(lambda: seen.update({s: signal.getsignal(s) for s in before}))
    assert {s: signal.getsignal(s) for s in before} == before
    for s, handler in before.items():  # replaced while main ran, where it was the default
        assert (seen[s] is not handler) == (handler == signal.SIG_DFL)


def test_a_stop_signal_inside_a_deferred_block_is_raised_when_it_ends():
    """stop_signals_deferred: SIGTERM while a child is being started is raised as Terminated after the
    block, so the child is recorded (and stopped by the cleanup) first. In a fresh interpreter, whose main
    thread holds the handlers; the block's remaining statements run, the code after it does not."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, signal, sys
        sys.path.insert(0, sys.argv[1])
        from bart_ext.cli import Terminated, interrupt_on_stop_signals, stop_signals_deferred
        interrupt_on_stop_signals()
        steps = []
        try:
            with stop_signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs between these bytecodes
                    pass
                steps.append("rest of the block")
            steps.append("after the block")
        except Terminated as e:
            steps.append(f"Terminated {e.exit_status}")
        try:  # outside a block (the handler ignores a second signal once it has fired: reinstall it)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            interrupt_on_stop_signals()
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
            steps.append("not interrupted")
        except Terminated:
            steps.append("raised at once")
        print(steps)
    """)
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['rest of the block', 'Terminated 143', 'raised at once']"
