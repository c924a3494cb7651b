# Both targets create the environment they need on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-slow lint system-deps clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/gare demo

# System packages used only by tests (damaged/real videos from Debian's opencv-doc, headless Chromium).
system-deps:
	bash scripts/install-test-system-deps.sh

# Full suite: fast tests and the ones marked slow (CI runs this).
test: $(VENV)/.installed system-deps
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)
	$(PY) -m pytest -q -m "slow" $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
