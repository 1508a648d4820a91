# The two commands: `make demo` and `make test`. Each sets up what it needs on a fresh
# machine (system data packages, the .venv, the install) and reuses it on a second call.

VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
DATA   := .cache/offline/.installed

.PHONY: setup data demo demo-s3 test lint typecheck unit bench gpu-faiss clean

setup: $(STAMP) $(DATA)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -U pip wheel
	$(PIP) install -c constraints.txt -e ".[dev]"
	# img2dataset pins the py3.6 `dataclasses` backport, which breaks Prefect's server.
	$(PIP) uninstall -y -q dataclasses || true
	touch $(STAMP)

$(DATA): scripts/install_offline_data.sh $(STAMP)
	bash scripts/install_offline_data.sh
	touch $(DATA)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy model tasks

# The tests run on two pytest-xdist workers, grouped by tests/xdist_groups.py (README, "Tests
# and benchmarks"); `make test TEST_WORKERS=` runs them serially, `TEST_WORKERS=4` on four.
TEST_WORKERS ?= 2

test: setup lint typecheck
	$(VENV)/bin/pytest -q -ra --durations=20 $(if $(TEST_WORKERS),-n $(TEST_WORKERS) --dist loadgroup)

demo: setup
	$(VENV)/bin/clipflow demo configs/demo.yaml

demo-s3: setup
	$(VENV)/bin/clipflow demo configs/demo-s3.yaml --with-moto

# On a CUDA machine: curate's FAISS searches on the GPU (README, "GPU FAISS"). faiss-gpu and
# faiss-cpu install the same `faiss` package; the GPU build must be the one left on disk.
gpu-faiss: setup
	$(PIP) install -c constraints.txt -e ".[gpu]"
	$(PIP) install -c constraints.txt --force-reinstall --no-deps "faiss-gpu==1.15.1"
	$(PY) -c "import faiss; print('FAISS', faiss.__version__, 'sees', faiss.get_num_gpus(), 'GPU(s)')"

# Several benchmarks read the demo's outputs (bench_rules_quality, bench_prefect_overhead,
# bench_adapt): `make demo` first, which skips every stage already done.
bench: demo
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf data .pytest_cache .mypy_cache .ruff_cache
