# The team's vocabulary: `make run`, `make test`, `make lint`, `make fmt`, `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt bench install clean

$(STAMP): requirements-dev.txt constraints.txt $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	@# a .venv from before forge-cli existed: upgrading forge-dev removes the `forge` script it used
	@# to own, after forge-cli installed its own; put it back
	@test -x $(BIN)/forge || $(BIN)/python -m pip install --quiet --no-deps --force-reinstall -e ./libs/forge_cli
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m forge_dev.run

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .forge-data .pytest_cache .mypy_cache .ruff_cache
