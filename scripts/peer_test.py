#!/usr/bin/env python
"""fairseq's own test suite as our peer suite: run it without and with the plugin, compare per test.

The tests come from the ``fairseq-fixed==0.12.3.1`` sdist (fetched from the package registry into
data/downloads once). The sdist lacks fairseq's ``tests/utils.py``, which most of its tests import:
it is taken from ``../shared/fairseq-tests/`` at run time and never copied into the project. Both
runs use this project's environment in scratch folders (``runs/peer-test/{stock,plugin}``); the
plugin run adds a ``conftest.py`` that imports ``user_dir`` first, as ``--user-dir`` does.

Printed: both pytest summaries, the tests that fail only with the plugin (exit 1 if there is any),
and the tests that fail only without it (what the plugin fixes). Left out in both runs, the same way:
``EXCLUDED`` (network, too slow for this machine); CUDA-only tests skip themselves.

Usage: python scripts/peer_test.py [--files test_checkpoint_utils.py,...] [--plugin-only] [--workdir runs/peer-test]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SDIST = "fairseq-fixed==0.12.3.1"
UTILS = ROOT.parent / "shared" / "fairseq-tests" / "utils.py"
EXCLUDED = {
    "test_binaries.py": "trains dozens of models end to end: over 30 minutes on 2 cores",
    "test_hf_hub.py": "downloads from the Hugging Face hub (no network here)",
}
# The files CI runs with the plugin (checkpoints, reproducibility, generation incl. TorchScript, fp16).
CI_FILES = ("test_checkpoint_utils.py", "test_checkpoint_utils_for_task_level_attributes.py",
            "test_reproducibility.py", "test_sequence_generator.py", "test_fp16_optimizer.py",
            "test_memory_efficient_fp16.py", "test_amp_optimizer.py")
PLUGIN_CONFTEST = f'''"""Load bart_ext's plugin first, as fairseq's --user-dir loader does."""
import sys
sys.path.insert(0, {str(ROOT)!r})
import user_dir  # noqa: E402,F401
'''


def fetch_sdist(downloads: Path) -> Path:
    downloads.mkdir(parents=True, exist_ok=True)
    found = sorted(downloads.glob("fairseq_fixed-*.tar.gz"))
    if not found:
        print(f"[peer-test] fetching the {SDIST} sdist", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", SDIST, "-d", str(downloads)], check=True)
        found = sorted(downloads.glob("fairseq_fixed-*.tar.gz"))
    if not found:
        raise SystemExit(f"pip download {SDIST} left no fairseq_fixed-*.tar.gz in {downloads}")
    return found[-1]


def lay_out(sdist: Path, dest: Path, plugin: bool) -> Path:
    """``dest/tests`` from the sdist plus fairseq's utils.py; a plugin conftest when asked."""
    if not UTILS.exists():
        raise SystemExit(f"{UTILS} not found: fairseq's tests/utils.py is expected in ../shared/fairseq-tests/")
    shutil.rmtree(dest, ignore_errors=True)
    tests = dest / "tests"
    tests.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) >= 3 and parts[1] == "tests" and member.isfile():
                target = tests.joinpath(*parts[2:])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    shutil.copy(UTILS, tests / "utils.py")
    (tests / "__init__.py").touch()
    (dest / "pytest.ini").write_text("[pytest]\n")  # the scratch folder is the rootdir, not this project
    if plugin:
        (dest / "conftest.py").write_text(PLUGIN_CONFTEST)
    return tests


def run_suite(dest: Path, files: list[str]) -> tuple[dict[str, str], str]:
    """pytest in ``dest``: {test id: outcome} and pytest's summary line."""
    report = dest / "report.xml"
    targets = [f"tests/{f}" for f in files] if files else ["tests"]
    ignores = [f"--ignore=tests/{f}" for f in EXCLUDED]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors", f"--junitxml={report}", *ignores, *targets]
    proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    (dest / "pytest.log").write_text(proc.stdout + proc.stderr)
    summary = next((ln for ln in reversed(proc.stdout.splitlines()) if " in " in ln and ("passed" in ln or
                    "failed" in ln or "error" in ln)), f"(no summary; exit {proc.returncode})")
    if not report.exists():
        raise SystemExit(f"pytest wrote no report in {dest} (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = ("failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds
                          else "passed")
    return outcomes, summary.strip("= ")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", default="", help="comma-separated test files (default: the whole suite); "
                                                "'ci' for the files CI runs")
    ap.add_argument("--plugin-only", action="store_true", help="only the run with the plugin (fails on any failure)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "peer-test")
    ap.add_argument("--downloads", type=Path, default=ROOT / "data" / "downloads")
    args = ap.parse_args(argv)
    files = list(CI_FILES) if args.files == "ci" else [f for f in args.files.split(",") if f]
    sdist = fetch_sdist(args.downloads)
    print(f"[peer-test] fairseq's tests from {sdist.name}; left out: "
          + "; ".join(f"{k} ({v})" for k, v in EXCLUDED.items()), flush=True)

    results = {}
    for label in (["plugin"] if args.plugin_only else ["stock", "plugin"]):
        dest = args.workdir / label
        lay_out(sdist, dest, plugin=label == "plugin")
        print(f"[peer-test] running fairseq's tests {'with' if label == 'plugin' else 'without'} the plugin ...",
              flush=True)
        results[label] = run_suite(dest, files)
        print(f"[peer-test] {label:>6}: {results[label][1]}   (log: {dest / 'pytest.log'})", flush=True)

    plugin = results["plugin"][0]
    if args.plugin_only:
        failed = sorted(t for t, o in plugin.items() if o == "failed")
        for t in failed:
            print(f"  failed with the plugin: {t}")
        return 1 if failed else 0
    stock = results["stock"][0]
    worse = sorted(t for t, o in plugin.items() if o == "failed" and stock.get(t) == "passed")
    better = sorted(t for t, o in plugin.items() if o == "passed" and stock.get(t) == "failed")
    missing = sorted(set(stock) ^ set(plugin))
    print(f"\n[peer-test] fixed by the plugin (fail without it, pass with it): {len(better)}")
    for t in better:
        print(f"  {t}")
    print(f"[peer-test] failing only with the plugin: {len(worse)}")
    for t in worse:
        print(f"  {t}")
    if missing:
        print(f"[peer-test] collected in only one run: {len(missing)}")
        for t in missing:
            print(f"  {t}")
    return 1 if worse or missing else 0


if __name__ == "__main__":
    sys.exit(main())
