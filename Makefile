# TradePulse. The two commands that matter: `make up` (run the pipeline) and `make test`.
# Everything they need is installed here, on a fresh machine: no hand-installed tools assumed
# beyond the README's prerequisites (Python 3.11+, Java 17+, Maven, Node/npm).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: help install up test lint fmt kafka-jars browser node synth bench chaos clean distclean

help:
	@echo "make up      run the whole pipeline locally (Kafka, simulator, ingest, processor, API, dashboard)"
	@echo "make test    install everything needed and run the whole test suite"
	@echo "make lint    ruff check + format check"
	@echo "make synth   synthesize the CDK app offline (cdk.out/)"
	@echo "make bench   full-path market-open benchmark (results/)"
	@echo "make chaos   the full reliability suite (kill -9 idle and under contention, broker restart, poison, slow sink)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing Python dependencies into $(VENV)"
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[aws,dev,cdk]"
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

kafka-jars: install
	@$(BIN)/tradepulse kafka fetch

# Debian chromium for the dashboard browser test (the test suite needs a real browser).
browser:
	@command -v chromium >/dev/null 2>&1 || bash scripts/install_browser.sh

node:
	@command -v npm >/dev/null 2>&1 || { echo "error: Node.js/npm is required for the CDK CLI: install nodejs and npm"; exit 1; }
	@if [ -f package-lock.json ] && [ ! -d node_modules ]; then echo "==> npm ci (CDK CLI)"; npm ci --no-audit --no-fund --loglevel=error; fi

up: kafka-jars
	$(BIN)/tradepulse up

test: kafka-jars browser node
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

synth: install node
	npx cdk synth --quiet

bench: kafka-jars
	$(BIN)/tradepulse bench

chaos: kafka-jars
	$(BIN)/pytest -m "" tests/reliability $(PYTEST_ARGS)

clean:
	rm -rf .pytest_cache .ruff_cache cdk.out test-artifacts results layers/build

distclean: clean
	rm -rf $(VENV) .tradepulse node_modules
