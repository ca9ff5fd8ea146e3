# Switchboard: `make run` starts the whole stack, `make test` runs the full suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test bench lint format protos clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

## run: create .venv, install, start the agent service and the edge on embedded defaults
run: $(STAMP)
	$(BIN)/switchboard dev

## test: the full test suite (real processes on free loopback ports)
test: $(STAMP)
	$(BIN)/pytest

## bench: every benchmark system side by side in one run (table, JSON and chart in benchmarks/results)
bench: $(STAMP)
	$(BIN)/python -m benchmarks

## lint: ruff, mypy --strict and buf lint
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && npx --yes @bufbuild/buf@1.75.0 lint

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## protos: regenerate switchboard/v1 from protos/
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
