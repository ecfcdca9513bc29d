# `make test` and `make run` bootstrap .venv when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test run bench bench-peers clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

run: $(STAMP)
	$(VENV)/bin/sparsesearch run

bench: $(STAMP)
	$(PY) benchmarks/equal_compute.py
	$(MAKE) bench-peers

# structured pruning against Torch-Pruning and ModelOpt FastNAS (the optional `bench` extra)
bench-peers: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/peers.py

clean:
	rm -rf $(VENV) runs .pytest_cache
