#!/usr/bin/env bash
# The GPU acceptance run: one command for a freshly lent GPU machine, within 10 minutes.
#
#   bash scripts/gpu_check.sh prepare   here, with the repo's .venv and the package registries:
#                                       writes gpu_carry/ (fairseq-fixed's sdist, to be built
#                                       there; wheels of what the GPU image lacks, for Python 3.11
#                                       and 3.12) and prints what to carry
#   bash scripts/gpu_check.sh run       there, in the repo root, with gpu_carry/, data/aclsum/bin,
#                                       runs/demo (its summary.json names the summarization data,
#                                       data/aclsum_summ_m4000/bin by default) and that data carried: installs into a fresh venv (no network), runs the
#                                       CUDA tests, bench_gpu_mfu.py (base and large, 128 and 512,
#                                       bf16, fused loss, compiled), one fairseq-generate latency at
#                                       beam 6, and prints a short report (gpu_report.txt, in $OUT
#                                       when $OUT is set, written as it goes); exit status 0 = PASS
#
# The GPU image (the device tool's notes): Python 3.12, torch 2.11 (CUDA 13), triton, transformers,
# cython, numpy, pyarrow, sentencepiece, tiktoken; no fairseq, hydra-core, omegaconf, bitarray,
# no internet. On a machine without CUDA, `run` does everything it can: the install, the CUDA tests
# skipping, the benchmark and the latency on the CPU at toy sizes (GPU_CHECK_SMOKE=1 forces this).
set -euo pipefail

# The summarization data the demo's checkpoints were fine-tuned on (their dictionary is its), as
# runs/demo/summary.json records it relative to the repository.
demo_data() {
  ${PYTHON:-python3} -c 'import json; print(json.load(open("runs/demo/summary.json"))["summarization_data"])'
}
cd "$(dirname "$0")/.."
ROOT=$PWD
CARRY=${GPU_CHECK_CARRY:-$ROOT/gpu_carry}
FAIRSEQ=fairseq-fixed==0.12.3.1
# What fairseq and bart_ext import that the image lacks. Pure-Python ones as wheels; compiled ones
# for both Pythons (3.11 is this machine's, for the rehearsal).
PURE=(hydra-core==1.3.2 omegaconf==2.3.0 sacrebleu portalocker tabulate colorama pytest pluggy iniconfig pygments
      packaging setuptools wheel)
COMPILED=(bitarray PyYAML regex lxml)
SDIST_ONLY=(antlr4-python3-runtime==4.9.3)  # hydra's parser; PyPI has no wheel: built here (pure Python)

prepare() {
  local PY=${PYTHON:-$ROOT/.venv/bin/python}
  rm -rf "$CARRY.tmp" && mkdir -p "$CARRY.tmp/wheels"
  local pip=("$PY" -m pip -q --disable-pip-version-check)
  echo "[gpu_check] $FAIRSEQ sdist"
  "${pip[@]}" download --no-deps --no-binary :all: --no-build-isolation "$FAIRSEQ" -d "$CARRY.tmp"
  echo "[gpu_check] pure-Python wheels: ${PURE[*]} ${SDIST_ONLY[*]}"
  "${pip[@]}" download --no-deps --only-binary :all: "${PURE[@]}" -d "$CARRY.tmp/wheels"
  "${pip[@]}" wheel --no-deps "${SDIST_ONLY[@]}" -w "$CARRY.tmp/wheels"
  for pyver in 3.11 3.12; do
    echo "[gpu_check] compiled wheels for CPython $pyver: ${COMPILED[*]}"
    "${pip[@]}" download --no-deps --only-binary :all: --implementation cp --python-version "$pyver" \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
      "${COMPILED[@]}" -d "$CARRY.tmp/wheels"
  done
  rm -rf "$CARRY" && mv "$CARRY.tmp" "$CARRY"
  [ -e runs/demo/summary.json ] || { echo "[gpu_check] runs/demo/summary.json is missing: run 'make demo' first" >&2; exit 1; }
  local need=(data/aclsum/bin "$(demo_data)" runs/demo/finetune/checkpoint_best.pt runs/demo/summary.json)
  for p in "${need[@]}"; do
    [ -e "$p" ] || { echo "[gpu_check] $p is missing: run 'make demo' first" >&2; exit 1; }
  done
  echo "[gpu_check] ready: $(du -sh "$CARRY" | cut -f1) in gpu_carry/; carry $(du -shc gpu_carry "${need[@]}" | tail -1 | cut -f1) in all:"
  echo "  gpu_carry ${need[*]}"
}

# The venv of the run: the image's packages (torch, numpy, cython, ...) plus what gpu_carry/ holds.
install() {
  local VENV=${GPU_CHECK_VENV:-/tmp/bart_ext_gpu_venv}
  [ -d "$CARRY" ] || { echo "[gpu_check] no gpu_carry/: run 'bash scripts/gpu_check.sh prepare' where PyPI is reachable" >&2; exit 1; }
  if [ ! -x "$VENV/bin/python" ]; then
    ${PYTHON:-python3} -m venv --system-site-packages "$VENV"
  fi
  # A venv made by an interpreter that is itself a venv's (the image's torch lives in
  # /opt/torch/.venv) sees only the base interpreter's packages: a .pth adds the creator's.
  "${PYTHON:-python3}" -c 'import site; print("\n".join(site.getsitepackages()))' \
    > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_bart_ext_creator_site.pth"
  P=$VENV/bin/python
  local pip=("$P" -m pip install -q --disable-pip-version-check --no-index --find-links "$CARRY/wheels")
  if ! "$P" -c "import hydra, omegaconf, bitarray, yaml, regex, sacrebleu, pytest, setuptools" 2>/dev/null; then
    echo "[gpu_check] installing wheels from gpu_carry/"
    "${pip[@]}" hydra-core omegaconf antlr4-python3-runtime bitarray PyYAML regex sacrebleu pytest setuptools wheel
  fi
  if ! "$P" -c "import fairseq" 2>/dev/null; then
    echo "[gpu_check] building $FAIRSEQ from its sdist (its C++/Cython extensions; no CUDA extensions)"
    # Without CUDA_HOME fairseq's setup.py builds no CUDA extension (minutes saved; bart_ext blocks
    # n-grams without it). MAX_JOBS: torch's extension builder in parallel.
    env -u CUDA_HOME MAX_JOBS="$(nproc)" "${pip[@]}" --no-build-isolation --no-deps "$CARRY"/fairseq_fixed-*.tar.gz
  fi
  # fairseq imports every criterion and task at start-up; two import scikit-learn and scipy (GLUE
  # metrics, audio classification). Where the image lacks them, a stand-in whose functions raise,
  # in this venv only: nothing this check runs calls them.
  if ! "$P" -c "import sklearn.metrics, scipy.stats" 2>/dev/null; then
    echo "[gpu_check] no scikit-learn/scipy in the image: stand-ins that raise when called (GLUE metrics only)"
    local site
    site=$("$P" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    "$P" - "$site" <<'PYEOF'
import sys, pathlib
site = pathlib.Path(sys.argv[1])
stub = ("def _missing(*args, **kwargs):\n"
        "    raise ImportError('scikit-learn/scipy are not installed on this GPU check (scripts/gpu_check.sh)')\n")
files = {"sklearn/__init__.py": "", "sklearn/metrics.py": stub + "f1_score = matthews_corrcoef = _missing\n",
         "scipy/__init__.py": "", "scipy/stats.py": stub + "pearsonr = spearmanr = _missing\n"}
for name, text in files.items():
    (site / name).parent.mkdir(parents=True, exist_ok=True)
    (site / name).write_text(text)
PYEOF
  fi
  # The repository on the venv's path (bart_ext, user_dir): a .pth, not `pip install -e`, whose
  # setup.py develop re-invokes pip with build isolation and so needs the network.
  echo "$ROOT" > "$("$P" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_bart_ext_repo.pth"
  "$P" -c "import torch, fairseq, user_dir; print('[gpu_check] ok: torch', torch.__version__, 'CUDA', torch.version.cuda, 'fairseq', fairseq.__version__)"
}

run() {
  local t0=$SECONDS
  install
  # Under the device tool, straight into $OUT: what was written comes back even if time runs out.
  local report=${OUT:-$ROOT}/gpu_report.txt
  local cuda smoke=${GPU_CHECK_SMOKE:-0}
  cuda=$("$P" -c "import torch; print(int(torch.cuda.is_available()))")
  [ "$cuda" = 1 ] || smoke=1
  local device=cuda; [ "$smoke" = 1 ] && device=cpu
  {
    echo "# bart_ext GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    "$P" -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA (rehearsal: toy sizes on the CPU)', '| torch', torch.__version__)"
  } > "$report"

  echo "[gpu_check] CUDA tests (pytest -m cuda)"
  local tests
  tests=$(grep -rl "mark.cuda" tests --include='test_*.py' | sort)
  set +e
  "$P" -m pytest -q -m cuda -p no:cacheprovider $tests 2>&1 | tee /tmp/gpu_check_pytest.log | tail -15
  local rc_tests=${PIPESTATUS[0]}
  set -e
  { echo; echo "## CUDA tests (rc $rc_tests)"; tail -1 /tmp/gpu_check_pytest.log; grep -E "^(FAILED|ERROR)" /tmp/gpu_check_pytest.log || true; } >> "$report"

  echo "[gpu_check] training throughput (bench_gpu_mfu.py)"
  echo -e "\n## Training throughput, bf16 autocast, fused loss, compiled, NVLAMB (bench_gpu_mfu.py)" >> "$report"
  # The base run then profiles 3 steps at length 128 (bench_gpu_mfu.py --profile): the phases, how busy
  # the GPU was, and the top operators by device time, for the next look at the MFU.
  local runs=("bart_base_preln 128,512 256,64 3" "bart_large_preln 128,512 128,32 0")
  local steps=(--steps 10 --warmup 4)
  if [ "$smoke" = 1 ]; then runs=("bart_tiny_preln 32,64 4,2 1"); steps=(--steps 2 --warmup 1); fi
  local rc_bench=0
  for r in "${runs[@]}"; do
    set -- $r
    local log=/tmp/gpu_check_bench_$1.log
    if timeout 200 "$P" scripts/bench_gpu_mfu.py data/aclsum/bin --arch "$1" --lengths "$2" --batch "$3" \
        "${steps[@]}" --profile "$4" --compile --device "$device" > "$log" 2>&1; then
      grep -E "sequences/s|graph breaks" "$log" | tee -a "$report"
      if [ "$4" != 0 ]; then  # the profile's summary line and its table (the table's 25 lines after it)
        { echo; grep -A 25 "^profile of" "$log"; } | tee -a "$report"
      fi
    else
      rc_bench=1
      { echo "$1: failed (rc $?), last lines of $log:"; tail -5 "$log"; } | tee -a "$report"
    fi
  done

  echo "[gpu_check] generation latency (fairseq-generate, beam 6, batch 1)"
  echo -e "\n## Generation latency: fairseq-generate, XSum preset (beam 6), batch 1, the 100 test documents" >> "$report"
  local gen=("$(demo_data)" --user-dir user_dir --task bart_summarization
             --path runs/demo/finetune/checkpoint_best.pt --gen-subset test --batch-size 1
             --beam 6 --lenpen 1.0 --max-len-b 60 --min-len 10
             --no-repeat-ngram-size 3 --results-path /tmp/gpu_check_generate)
  [ "$device" = cpu ] && gen+=(--cpu)
  local rc_gen=0
  timeout 90 "$P" -m fairseq_cli.generate "${gen[@]}" > /tmp/gpu_check_generate.log 2>&1 || rc_gen=1
  local line
  line=$(grep -ho "Translated .*" /tmp/gpu_check_generate.log /tmp/gpu_check_generate/generate-test.txt 2>/dev/null | head -1 || true)
  if [ -n "$line" ]; then
    echo "$line" | tee -a "$report"
    echo "$line" | "$P" -c "import re,sys; m=re.search(r'\(([\d.]+) sentences/s', sys.stdin.read()); print(f'latency {1000/float(m.group(1)):.1f} ms per document')" | tee -a "$report"
  else
    rc_gen=1; tail -5 /tmp/gpu_check_generate.log >> "$report"
  fi

  local verdict=PASS
  [ "$rc_tests" = 0 ] && [ "$rc_bench" = 0 ] && [ "$rc_gen" = 0 ] || verdict=FAIL
  echo -e "\n## Verdict: $verdict (tests rc $rc_tests, benchmark rc $rc_bench, generate rc $rc_gen) in $((SECONDS - t0)) s" >> "$report"
  [ -n "${OUT:-}" ] && cp /tmp/gpu_check_*.log "$OUT"/ 2>/dev/null || true
  echo; cat "$report"
  [ "$verdict" = PASS ]
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: bash scripts/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
