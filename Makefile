# Switchboard: `make run` starts the whole stack, `make test` runs the full suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXAMPLE := examples/helpdesk
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(EXAMPLE)/pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install run test fuzz bench lint format protos clean

# The example app is installed next to Switchboard, as an adopter installs theirs (the tests run it).
$(STAMP): pyproject.toml $(EXAMPLE)/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e $(EXAMPLE)
	@rm -f $(VENV)/.installed-*
	@touch $@

## install: create .venv and install Switchboard with its dev tools and the example app
install: $(STAMP)

## run: create .venv, install, start the agent service and the edge on embedded defaults
run: $(STAMP)
	$(BIN)/switchboard dev

## test: the full test suite (real processes on free loopback ports)
test: $(STAMP)
	$(BIN)/pytest

## fuzz: the property-based fuzz test of the edge with many more examples (FUZZ_EXAMPLES, default 10000)
FUZZ_EXAMPLES ?= 10000
fuzz: $(STAMP)
	SWITCHBOARD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) SWITCHBOARD_FUZZ_REPORT=$(CURDIR)/var/fuzz-report.json \
		$(BIN)/pytest -q -s -p no:cacheprovider -W ignore -o timeout=0 tests/e2e/test_fuzz.py

## bench: every benchmark system side by side in one run (table, JSON and chart in benchmarks/results)
bench: $(STAMP)
	$(BIN)/python -m benchmarks

## lint: ruff, mypy --strict, the layering contracts (lint-imports) and buf lint
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	cd protos && npx --yes @bufbuild/buf@1.75.0 lint

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## protos: regenerate switchboard/v1 from protos/
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
