# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each installs what it needs into .venv (idempotent) and prepares the default data.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: install data demo test peer-test bench clean

install:
	@bash scripts/install.sh

data: install
	@$(PY) scripts/prepare_data.py --out data/aclsum
	@$(PY) scripts/prepare_summarization.py --out data/aclsum_summ --dict data/aclsum/bin/dict.txt

demo: data
	@$(PY) scripts/demo.py

# Two pytest-xdist workers, one file each at a time (module fixtures are built once), one thread
# each (tests/conftest.py), fairseq's commands forked from a preloaded interpreter (tests/launcher.py):
# README, "Set-up: two commands", for the times. `make test TEST_WORKERS=0`: one process.
TEST_WORKERS ?= 2
test: data
	@$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -p no:benchmark --durations=25 tests

# fairseq's own test suite without and with the plugin; fails on any test that fails only with it
peer-test: install
	@$(PY) scripts/peer_test.py

bench: data
	@$(PY) scripts/bench_train.py
	@$(PY) scripts/bench_loss.py
	@$(PY) scripts/bench_noise.py
	@$(PY) scripts/bench_nvlamb.py
	@$(PY) scripts/bench_dropout.py
	@$(PY) scripts/bench_attention.py
	@$(PY) scripts/bench_lddl.py
	@$(PY) scripts/bench_ddp.py
	@$(PY) scripts/bench_generate.py

clean:
	rm -rf runs outputs multirun .pytest_cache
