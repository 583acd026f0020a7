# Two entry points for users: `make demo` (the main job) and `make test` (the default suite).
# Every target sets up .venv on first use, so a fresh machine needs only Python 3.11.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_ARGS ?=
STUDY_ARGS ?=

.PHONY: venv demo test test-slow test-all lint format format-check test-zoo-ci test-py310 typecheck bench study package test-monailabel clean

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
	$(MAKE) format-check
	$(PY) -m pytest -m "not slow"
	$(call zoo_ci,$(PY))

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

test-all: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

# The model zoo's code-format rules (pyproject.toml [tool.black]/[tool.isort], setup.cfg [flake8]); flake8 covers what
# the zoo checks: the shipped scripts/ and the zoo-format unit tests.
FLAKE8_PATHS := scripts tests/zoo_ci
format: $(STAMP)
	$(PY) -m isort --quiet .
	$(PY) -m black --quiet .

format-check: $(STAMP)
	$(PY) -m isort --check-only --diff .
	$(PY) -m black --check .
	$(PY) -m flake8 $(FLAKE8_PATHS) --count --statistics

# tests/zoo_ci/ through a runner with the zoo's semantics, on a copy staged as <tmp>/models/<bundle>; the _dist test
# runs under torchrun as in the zoo's GPU premerge (`torchrun runner.py --dist True`), and starts 2 processes itself.
ZOO_BUNDLE := mnet_anisotropic_segmentation
define zoo_ci
	$(1) tests/zoo_ci/runner.py --b $(ZOO_BUNDLE) --stage .
	$(1) -m torch.distributed.run --standalone --nproc_per_node=1 tests/zoo_ci/runner.py --b $(ZOO_BUNDLE) --dist True --stage .
endef

test-zoo-ci: $(STAMP)
	$(call zoo_ci,$(PY))

# Python 3.10 (the zoo CI's Python): the runtime pins plus the test tools, in .venv-py310 (git-ignored, reused while
# the requirements are unchanged). No local CPU wheel of torch exists for cp310, so torch comes from PyPI as the CUDA
# build (runs on the CPU; about 4.6 GB installed): docs/README.md, "Tested with".
PYTHON310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) python3.10)
VENV310 := .venv-py310
PY310 := $(VENV310)/bin/python
$(VENV310)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON310) -m venv $(VENV310)
	$(PY310) -m pip install --quiet --upgrade pip
	$(PY310) -m pip install --quiet -r requirements.txt $$(grep -E '^(pytest|jsonschema|psutil|pytype)==' requirements-dev.txt)
	touch $@

# On 3.10: the pins are what is installed, the zoo's verify_bundle checks (directory, version, metadata schema,
# verify_net_in_out, ckpt_export) from tests/test_zoo.py, and the zoo-format unit test (one-epoch train, evaluate and
# infer on tiny synthetic data). The 2-process test and the rest of the suite run on the main Python in `make test`.
PY310_ZOO_CHECKS := directory or verify_metadata or version or pins or verify_net_in_out or ckpt_export
test-py310: $(VENV310)/.installed
	$(PY310) -m pytest -p no:cacheprovider tests/test_pins.py tests/test_zoo.py -k "$(PY310_ZOO_CHECKS)"
	$(PY310) tests/zoo_ci/runner.py --b $(ZOO_BUNDLE) --stage .
	$(MAKE) typecheck

# pytype, the last step of the zoo's code-format job, on Python 3.10 with pyproject.toml's [tool.pytype] (scripts/,
# tests/zoo_ci/). It caught `class X(torch.nn.Conv3d)` after `import torch` (pytype: no attribute 'Conv3d' on module
# 'torch.nn'), which flake8 and ruff accept. Results are cached in .pytype/ (a rerun checks only changed files).
typecheck: $(VENV310)/.installed
	PATH="$(abspath $(VENV310))/bin:$$PATH" $(PY310) -m pytype --python-version=3.10  # it looks up python3.10 on PATH

bench: $(STAMP)
	$(PY) -m benchmarks.network
	$(PY) -m benchmarks.pipeline
	$(PY) -m benchmarks.inference

# MNet vs 2D/3D U-Nets across slice spacings (docs/study.md); STUDY_ARGS="--device cuda" for the full size
study: $(STAMP)
	$(PY) -m benchmarks.study $(STUDY_ARGS)

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
	rm -rf $(VENV) dist eval runs .pytest_cache .pytype
