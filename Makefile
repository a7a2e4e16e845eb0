# Two commands do all the set-up: `make run` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: these machines hold a local CPU wheel of 2.13.0; an unpinned torch pulls GBs of CUDA.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m server $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)
