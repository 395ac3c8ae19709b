"""The scripts' entry point: errors that name their input print one line, anything else keeps its
traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bart_ext.cli import names_its_input, run
from bart_ext.lddl_data import ShardError

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
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "show_noise.py"), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"show_noise.py: {tmp_path}/dict.txt not found")


def test_count_params_prints_the_presets_and_refuses_a_dictionary_below_its_specials():
    """count_params.py --dict-size 0 printed counts "(dictionary of 4 entries)": the size asked was not
    the size counted."""
    def count(size):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "count_params.py"), "--dict-size", str(size)],
                              capture_output=True, text=True, timeout=300)

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
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
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
