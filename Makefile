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

.PHONY: all demo test install clean

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

test: $(STAMP)
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) out .pytest_cache
