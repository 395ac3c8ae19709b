#!/usr/bin/env bash
# Idempotent set-up of the repo's .venv (see ../shared/ENVIRONMENT.md for why
# each step is the way it is). A second run takes seconds: every step is
# skipped when its result is already importable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV"
  # --system-site-packages keeps a torch that the machine already has (an NGC
  # container, a cluster module): it must never be replaced by a pip one.
  "$PY" -m venv --system-site-packages "$VENV"
fi
P="$VENV/bin/python"
pipi() { "$P" -m pip install -q --disable-pip-version-check "$@"; }
# Present = importable module spec (no import: torch and fairseq take seconds to import).
have() { "$P" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" >/dev/null 2>&1; }

if ! have torch; then
  echo "[install] torch==2.13.0 (no torch importable)"
  pipi torch==2.13.0
fi
if ! have fairseq; then
  echo "[install] fairseq-fixed==0.12.3.1 built against the installed torch (~2.5 min the first time)"
  pipi numpy cython setuptools wheel
  # --no-deps: its declared torchaudio would pull a second, CUDA torch.
  pipi --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
fi
stamp="$VENV/.bart_ext-deps"
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "[install] runtime dependencies and bart_ext (editable)"
  # constraints.txt: the versions the tests and the demo were last verified with
  pipi -r requirements.txt -c constraints.txt
  echo "[install] (a pip ERROR that fairseq-fixed requires torchaudio is expected: fairseq-fixed is installed"
  echo "[install]  without its dependencies, torchaudio would pull a second torch, and only fairseq's speech tasks use it)"
  # NVIDIA's LDDL without its 2021 pins (../shared/ENVIRONMENT.md)
  pipi --no-deps lddl==0.1.0
  pipi --no-build-isolation --no-deps -e .
  touch "$stamp"
fi
echo "[install] ok: $("$P" -c 'from importlib.metadata import version as v; print("torch", v("torch"), "fairseq", v("fairseq-fixed"))')"
