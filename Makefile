# edgeexport: `make demo` (main job), `make test` (whole suite), `make bench` (BENCHMARKS.md).
# All targets create .venv if missing and install the project into it (idempotent).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.edgeexport-installed
# Every optional extra in pyproject.toml except those that need hardware this kind of machine lacks
# (TensorRT: an NVIDIA GPU and NVIDIA's wheels): a new target's extra is installed without editing this.
HARDWARE_EXTRAS ?= tensorrt
EXTRAS ?= $(shell $(PYTHON) -c "import tomllib; e = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; print(','.join(k for k in e if k not in '$(HARDWARE_EXTRAS)'.split()))")
PYTEST_WORKERS ?= 2

.PHONY: demo test bench install clean weights weights-pyconvresnet50 browser schema

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeexport run recipes/lraspp_mobilenetv3.yaml

# the modules with the longest fixtures first, so that two workers finish together (each module's fixtures are
# built once: --dist loadscope keeps a module on one worker)
LONGEST_FIRST = tests/quantize/test_hostile_corpus.py tests/test_matrix.py tests/export/test_executorch.py tests/divergence/test_diff.py \
	tests/targets/test_litert.py tests/targets/test_conformance.py tests/zoo/test_every_model_exports.py tests/rewrite/test_equalize.py tests/test_cli.py \
	tests/quantize/test_quantize.py

test: $(STAMP) browser
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope --durations=15 $(LONGEST_FIRST) tests

# Headless Chromium for the HTML report's browser test, where this machine lets us install it (root with
# apt-get, e.g. CI). Best effort, never an error: without it that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		  { apt-get install -y -q chromium >/dev/null 2>&1 || \
		    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
		echo "note: Chromium is not installed (apt-get install chromium); the HTML report's browser test is skipped"

bench: $(STAMP) weights-pyconvresnet50
	$(PY) benchmarks/run.py --output BENCHMARKS.md

# The published JSON Schema of report files (a test checks that it matches the code).
schema: $(STAMP)
	$(PY) -c "import json; from edgeexport.report.schema import json_schema; \
		print(json.dumps(json_schema(), indent=2, sort_keys=True))" > schemas/report.schema.json

# Reference weights trained here (edgeexport/training.py). The LR-ASPP pair and pyconvresnet18 ship in
# the package; pyconvresnet50 is too large to commit and is trained on demand into the user cache
# (~/.cache/edgeexport/trained, or $$EDGEEXPORT_CACHE): about an hour on 2 CPU cores, once.
weights-pyconvresnet50: $(STAMP)
	@$(PY) -c "from edgeexport.zoo.pretrained import find_trained; import sys; sys.exit(0 if find_trained('pyconvresnet50', 'shapes').available() else 1)" \
		|| $(VENV)/bin/edgeexport train pyconvresnet50 --tag shapes

# Retrain every reference checkpoint from its recipe and seed (overwrites the shipped files).
weights: $(STAMP)
	for m in lraspp_mobilenetv3_large lraspp_mobilenetv3_small pyconvresnet18 pyconvresnet50; do \
		$(VENV)/bin/edgeexport train $$m --tag shapes || exit 1; done

clean:
	rm -rf out .pytest_cache
