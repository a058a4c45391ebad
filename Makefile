# Two commands do all set-up on a fresh machine:
#   make demo   -- run streamd on the embedded default model and write the result under out/demo
#   make test   -- run the whole test suite
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# torch is pinned: on a machine without CUDA this is the CPU build; an unpinned torch would pull a multi-GB
# CUDA build. Install the CUDA build of the same version yourself on a GPU host (see README).
TORCH ?= torch==2.13.0

# Debian packages the tests need, as "command:package" pairs.
SYSTEM_DEPS ?= mosquitto:mosquitto systemd-analyze:systemd chromium:chromium openssl:openssl

.PHONY: all demo test lint install system-deps clean gpu-check

all: test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q "$(TORCH)"
	$(PYTHON) -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamd demo --out out/demo

# Installs what is missing when it can (root with apt-get); otherwise names the exact command and stops.
system-deps:
	@missing=""; for pair in $(SYSTEM_DEPS); do \
	  cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "the tests need these Debian packages; run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# Lint (ruff, configured in pyproject.toml) runs first: a finding fails the test run.
lint: $(STAMP)
	$(VENV)/bin/ruff check streamd tests

test: $(STAMP) system-deps lint
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) out .pytest_cache

# One-shot check of the 13.6B model on one GPU (a few minutes on an H100/H200): step time, fraction of peak,
# memory against plan, flash-attn vs SDPA, int8 and fp8. Exits 2 with a message where there is no CUDA.
gpu-check: $(STAMP)
	$(PYTHON) -m streamd.bench.gpu --json
