# The front door: `make run` serves the example model locally, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench soak clean test-gunicorn-lowest

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

# The lowest gunicorn pyproject.toml allows, when it is not the one installed: the worker's
# tests again on it, in a venv of their own (`make test` runs the newest).
GUNICORN_LOWEST := $(shell sed -n 's/.*"gunicorn>=\([0-9.]*\),.*/\1/p' pyproject.toml)
test-gunicorn-lowest: $(STAMP)
	@if [ "$$($(BIN)/python -c 'import gunicorn; print(gunicorn.__version__)')" = "$(GUNICORN_LOWEST)" ]; then \
		echo "gunicorn $(GUNICORN_LOWEST) is the one installed: make test covered it"; \
	else \
		$(PYTHON) -m venv $(VENV)/lowest && \
		$(VENV)/lowest/bin/pip install --quiet -e '.[dev]' 'gunicorn==$(GUNICORN_LOWEST)' && \
		PATH=$(CURDIR)/$(VENV)/lowest/bin:$$PATH $(VENV)/lowest/bin/python -m pytest -q \
			tests/test_gunicorn.py tests/test_processes.py tests/test_reload.py \
			tests/test_admission.py tests/test_overload.py tests/test_balancing.py; \
	fi

## bench: this service, the seed service and a floor app side by side; writes docs/benchmarks.md
bench: $(VENV)/.bench
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/run.py

## soak: 5 minutes at 70% of capacity with worker recycling; RSS and metric files must stay flat
soak: $(VENV)/.bench
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/run.py --only soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
