# The team's vocabulary: `make run`, `make test`, `make lint`, `make fmt`, `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt bench install clean images

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
	$(BIN)/python deploy/check.py
	$(BIN)/python -m forge_gateway.contract --check

# One image per process from the one Dockerfile, with buildah or docker, whichever is installed.
IMAGE_REGISTRY ?= registry.example.com/forge
IMAGE_TAG ?= 0.1.0
IMAGE_SERVICES ?= gateway pipeline release deployment approval worker
WORKER_PACKAGES ?=
# docker counts only with a reachable engine (`docker info`); a bare CLI cannot build.
CONTAINER_BUILDER ?= $(shell command -v buildah >/dev/null 2>&1 && echo buildah bud || (docker info >/dev/null 2>&1 && echo docker build))
images:
	@if [ -z "$(CONTAINER_BUILDER)" ]; then \
	  echo "make images: no container builder here (buildah, or docker with a running engine); nothing built" >&2; exit 1; fi
	@set -e; for s in $(IMAGE_SERVICES); do \
	  echo "building $(IMAGE_REGISTRY)/forge-$$s:$(IMAGE_TAG)"; \
	  $(CONTAINER_BUILDER) --build-arg SERVICE=$$s --build-arg VERSION=$(IMAGE_TAG) \
	    --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
	    --build-arg WORKER_PACKAGES="$(WORKER_PACKAGES)" \
	    -t $(IMAGE_REGISTRY)/forge-$$s:$(IMAGE_TAG) -f Dockerfile . ; \
	done

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .forge-data .pytest_cache .mypy_cache .ruff_cache
