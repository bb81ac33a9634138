# The two commands: `make serve` and `make test`. Everything else is setup they share.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

serve: install
	$(BIN)/trubrics-ingestion serve --host 127.0.0.1 --port 8000 --data-dir ./data

lint: install
	$(BIN)/ruff check src tests bench fuzz
	$(BIN)/mypy

test: install lint
	tests/setup-node.sh
	scripts/install-engines.sh
	scripts/install-browser.sh
	$(BIN)/python -m pytest -q

bench: install
	bench/setup.sh
	scripts/install-engines.sh
	$(BIN)/python bench/run.py

# Schemathesis against the served OpenAPI document, then a raw-bytes fuzz (not in `make test`).
fuzz: install
	$(BIN)/python fuzz/run.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
