# Development entry points. Everything runs from a local virtualenv in $(VENV).
VENV ?= .venv
PY = $(VENV)/bin/python
STAMP = $(VENV)/.installed

.PHONY: install test lint proto run soak bench certs browser robustness clean distclean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

lint: $(STAMP)
	$(VENV)/bin/ruff check cluster console scripts tests
	$(VENV)/bin/mypy cluster console scripts tests/robustness

# Regenerate cluster/proto/**/*_pb2*.py(i) from the .proto files (the results are committed).
proto: $(STAMP)
	$(PY) -m cluster.proto.generate

run: $(STAMP)
	$(PY) scripts/run_dev.py

# Only the browser tests (Playwright driving the system Chromium); `make test` runs them too.
browser: $(STAMP)
	$(PY) -m pytest -p no:xdist -m browser -q tests/browser

# Fault injection with a linearizability checker: 12 seeded runs (about 2.5 minutes), then a table.
robustness: $(STAMP)
	$(PY) -m pytest -m robustness -q -s

soak: $(STAMP)
	RAFT_SIM_SEEDS=100000 $(PY) -m pytest -m soak -n 2 -q
	$(PY) -m tests.robustness --runs 150 --seed 1000

# Throwaway CA, member and client certificates in var/certs (for TLS flags; never production).
certs: $(STAMP)
	$(PY) scripts/make_certs.py var/certs

bench: $(STAMP)
	$(PY) -m cluster.bench raft
	$(PY) -m cluster.bench wal
	$(PY) -m cluster.bench compare --rounds 3

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
