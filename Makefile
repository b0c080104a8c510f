# edgeexport: `make demo` (main job), `make test` (whole suite), `make bench` (BENCHMARKS.md).
# All targets create .venv if missing and install the project into it (idempotent).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.edgeexport-installed
EXTRAS ?= test,coreml,executorch
PYTEST_WORKERS ?= 2

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeexport run recipes/lraspp_mobilenetv3.yaml

test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15

bench: $(STAMP)
	$(PY) benchmarks/run.py --output BENCHMARKS.md

clean:
	rm -rf out .pytest_cache
