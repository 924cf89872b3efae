# Each target creates .venv on first use; re-installs when setup.cfg changes.
#   make test       every test (what CI runs after lint: .ci/run); a few minutes on 2 cores
#   make test-fast  the tests not marked slow (-m "not slow"): under a minute; the slow ones
#                   (real ResNet-50, Dask/Ray clusters, kill tests, console-script runs) are
#                   left to `make test`
#   make lint       ruff over store, pipeline and tests
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo bench lint clean

$(STAMP): setup.cfg
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev,labels,dask,ray]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/ssimcache demo

bench: $(STAMP)
	$(BIN)/ssimcache bench all

# ruff through the venv's python: the dev extra installs it there
lint: $(STAMP)
	$(BIN)/python -m ruff check store pipeline tests

clean:
	rm -rf $(VENV) build *.egg-info
