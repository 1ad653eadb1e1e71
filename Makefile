# Two commands on a fresh machine: `make sweep` and `make test`.
# Both create .venv when missing and install the project (with the dev extra) into it;
# the install is skipped when pyproject.toml has not changed since the last one.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.noisesweep-installed
STUDY ?= studies/tiny-mxfp4-w4a4.yaml
PYTEST_ARGS ?=

.PHONY: install sweep lint test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned: the CPU build on disk (an unpinned torch pulls a multi-GB CUDA build).
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

sweep: $(STAMP)
	$(VENV)/bin/noisesweep run $(STUDY)

# ruff over the whole tree, mypy over what pyproject's [tool.mypy] lists (quant/, the noise plan, racing).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) *.egg-info
