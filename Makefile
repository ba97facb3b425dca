# The front door: `make run` serves the example model locally, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,deploy]'
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet $$($(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["checkov"])')
	touch $(STAMP)

$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

## run: the service on 127.0.0.1:8000 against a local AWS emulator with an example model
##      (KAFKA=1: and a local Kafka broker, tansu, receiving the inference events)
run: $(STAMP)
	KAFKA=$(KAFKA) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m examples.run_local

## lint: ruff (lint and format check) and mypy
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## test: lint, then the whole test suite (emulator, gunicorn and the deploy/ checks included)
test: lint
	bash deploy/install-tools.sh
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest

## bench: this service, the seed service and a floor app side by side; writes BENCHMARKS.md
bench: $(VENV)/.bench
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/run.py

## soak: 5 minutes at 70% of capacity with worker recycling; RSS and metric files must stay flat
soak: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
