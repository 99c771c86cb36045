# Tollgate: `make run` starts everything locally; `make test` runs every check CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TOOLS := .tools
BIN := $(VENV)/bin
export AWS_DEFAULT_REGION ?= us-east-1
export SAM_CLI_TELEMETRY := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint typecheck template unit build bench clean

# The project's environment: runtime + dev dependencies, the tollgate CLI, editable.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# SAM CLI and cfn-lint pin their own boto3/pydantic: they live in a separate environment.
$(TOOLS)/bin/.installed: requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip
	$(TOOLS)/bin/pip install --quiet -r requirements-tools.txt
	touch $@

run: $(BIN)/.installed
	$(BIN)/tollgate serve --seed --with-schedules

test: lint typecheck template unit

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy layers/shared local functions migrations tests bench

template: $(TOOLS)/bin/.installed
	$(TOOLS)/bin/sam validate --lint --template template.yaml
	$(TOOLS)/bin/cfn-lint template.yaml

unit: $(BIN)/.installed
	$(BIN)/pytest

build: $(TOOLS)/bin/.installed
	$(TOOLS)/bin/sam build --template template.yaml

bench: $(BIN)/.installed
	$(BIN)/python bench/coldstart.py

clean:
	rm -rf $(VENV) $(TOOLS) .aws-sam .mypy_cache .pytest_cache .ruff_cache
