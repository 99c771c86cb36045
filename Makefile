# Tollgate: `make run` starts everything locally; `make test` runs every check CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TOOLS := .tools
BIN := $(VENV)/bin
export AWS_DEFAULT_REGION ?= us-east-1
export SAM_CLI_TELEMETRY := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint typecheck template unit unit-production tiers build bench clean

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

test: lint typecheck template tiers

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy layers/shared local functions migrations tests bench

# checkov skips only what .checkov.yaml lists, each with its reason; cfn-lint's ignores (with theirs) are in the
# template's Metadata.
template: $(TOOLS)/bin/.installed
	$(TOOLS)/bin/sam validate --lint --template template.yaml
	$(TOOLS)/bin/cfn-lint --include-checks I -- template.yaml
	$(TOOLS)/bin/checkov --config-file .checkov.yaml

unit: $(BIN)/.installed browser-if-possible
	$(BIN)/pytest

# The browser tests need chromium; where it cannot be installed they skip, and say so.
browser-if-possible:
	@$(MAKE) --no-print-directory browser || echo "chromium could not be installed (reason above): the browser tests will be skipped"

# The database tests again, in the template's function environment and through PgBouncer (transaction mode, the
# local RDS Proxy); PgBouncer is unpacked from the distribution's package on first use (tests/tiers.py).
unit-production: $(BIN)/.installed
	@if bouncer=$$($(BIN)/python -m tollgate_local.pgbouncer ensure); then \
		echo "production tier through $$bouncer"; \
		PGBOUNCER=$$bouncer TOLLGATE_TEST_TIER=production $(BIN)/pytest; \
	else \
		echo "unit-production SKIPPED: PgBouncer cannot be installed here (reason above)"; \
	fi

# Both tiers side by side (what `make test` runs): each pytest starts its own embedded PostgreSQL (the production
# tier its own PgBouncer too), so they share nothing but the two cores, which one tier alone leaves mostly idle
# waiting on the database. The production tier's output follows the default tier's; either failing fails the run.
tiers: $(BIN)/.installed browser-if-possible
	@log=$$(mktemp); \
	$(MAKE) --no-print-directory unit-production > "$$log" 2>&1 & production_pid=$$!; \
	$(BIN)/pytest; default_rc=$$?; \
	wait $$production_pid; production_rc=$$?; \
	echo "==== production tier ===="; cat "$$log"; rm -f "$$log"; \
	echo "default tier: exit $$default_rc; production tier: exit $$production_rc"; \
	test $$default_rc -eq 0 && test $$production_rc -eq 0

# The deploy artifacts (python3.13 on arm64, whatever Python builds them; lambda_build/Makefile), then their sizes.
# TOLLGATE_BUILD_TARGET=native builds them for this machine's Python instead (what tests/packaging imports).
build: $(TOOLS)/bin/.installed
	$(TOOLS)/bin/sam build --template template.yaml
	$(PYTHON) local/tollgate_local/layer.py sizes .aws-sam/build

.PHONY: browser browser-if-possible newcomer

# Debian's chromium, for the browser tests of the local pages (they skip, saying so, without it).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# A newcomer's figures: .venv size, and `make run` until /health answers (--fresh-clone also times a first make test).
newcomer: $(BIN)/.installed
	$(BIN)/python bench/newcomer.py

bench: $(BIN)/.installed
	$(BIN)/python bench/coldstart.py

clean:
	rm -rf $(VENV) $(TOOLS) .aws-sam .mypy_cache .pytest_cache .ruff_cache
