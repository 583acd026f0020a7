# Two entry points for users: `make demo` (the main job) and `make test` (the default suite).
# Every target sets up .venv on first use, so a fresh machine needs only Python 3.11.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_ARGS ?=

.PHONY: venv demo test test-slow test-all lint bench package test-monailabel clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m scripts.demo --work_dir $(DEMO_DIR) $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

test-all: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m benchmarks.network
	$(PY) -m benchmarks.pipeline
	$(PY) -m benchmarks.inference

package: $(STAMP)
	$(PY) -m tools.package --bundle_root . --out_dir dist

MONAILABEL_VENV := .venv-monailabel
$(MONAILABEL_VENV)/.installed: tests/monailabel/requirements.txt requirements.txt
	$(PYTHON) -m venv $(MONAILABEL_VENV)
	$(MONAILABEL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MONAILABEL_VENV)/bin/python -m pip install --quiet -r tests/monailabel/requirements.txt \
		$$(grep -v -E '^[[:space:]]*(#|$$|torch==|numpy==|monai==)' requirements.txt)
	touch $@

# tests of the bundle's numpy code (plan, checks, inputs, loss, data), rerun in the MONAI Label venv (numpy 1.26; .venv has numpy 2.x)
NUMPY1_TESTS := tests/test_plan.py tests/test_check_data.py tests/test_inputs.py tests/test_loss.py \
	tests/test_demo_data.py tests/test_displayable_configs.py

test-monailabel: $(MONAILABEL_VENV)/.installed
	$(MONAILABEL_VENV)/bin/python -c "import numpy; assert numpy.__version__.startswith('1.'), numpy.__version__"
	$(MONAILABEL_VENV)/bin/python -m pytest -q -m "not slow" $(NUMPY1_TESTS)
	PATH="$(CURDIR)/$(MONAILABEL_VENV)/bin:$$PATH" $(MONAILABEL_VENV)/bin/python tests/monailabel/run_check.py

clean:
	rm -rf $(VENV) dist eval runs .pytest_cache
