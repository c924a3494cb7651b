# Both targets create the environment they need on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# pytest, where exit status 5 ("no tests collected") is an error that names the selection: a tier that selects
# nothing is a broken marker expression, not a pass.
PYTEST = scripts/pytest-tier $(PY)

.PHONY: demo test test-fast test-slow test-demo lint system-deps clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# GARE and the baseline end to end, then the seeded clean/noisy comparison (runs/demo/report.md).
demo: $(VENV)/.installed
	$(VENV)/bin/gare demo

# System packages used only by tests (damaged/real videos from Debian's opencv-doc, headless Chromium).
system-deps:
	bash scripts/install-test-system-deps.sh

# Full suite: lint, fast tests, then the slow ones (except those that read the demo's output: test-demo).
test: $(VENV)/.installed system-deps
	$(PY) -m ruff check src tests benchmarks
	$(PYTEST) -q -m "not slow" $(PYTEST_ARGS)
	$(PYTEST) -q -m "slow and not demo" $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(PYTEST) -q -m "not slow" $(PYTEST_ARGS)

test-slow: $(VENV)/.installed
	$(PYTEST) -q -m "slow and not demo" $(PYTEST_ARGS)

# The tests that read runs/demo (after `make demo`): search accuracy on the test captions, the report's claims.
test-demo: $(VENV)/.installed
	$(PYTEST) -q -m "demo" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
