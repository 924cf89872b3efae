# Each target creates .venv on first use; re-installs when setup.cfg changes.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint clean

$(STAMP): setup.cfg
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev,labels,dask,ray]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/ssimcache demo

bench: $(STAMP)
	$(BIN)/ssimcache bench all

lint: $(STAMP)
	$(BIN)/ruff check store pipeline tests

clean:
	rm -rf $(VENV) build *.egg-info
