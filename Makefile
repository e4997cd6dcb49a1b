# One named command per chore, the same locally and in CI.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
LINT_DIRS := service tests migrations $(wildcard bench)
BENCH ?= pagination perf scaleout feed
# Our contract only: the googleapis files vendored under protos/google/ are imported, not
# generated (Python's google.api modules come from googleapis-common-protos).
PROTO_FILES := $(shell find protos/taskmanager -name '*.proto' | sort)

.PHONY: install proto check-generated lint test run migrate bench clean
.PHONY: buf-lint buf-breaking examples-node docs system-deps

BUF := $(BIN)/buf
# buf-breaking compares protos/ of the working tree with this commit's.
BUF_AGAINST ?= HEAD~1

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

proto: install
	rm -rf generated/taskmanager
	mkdir -p generated
	PATH="$(abspath $(BIN)):$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=generated --grpc_python_out=generated \
	  --mypy_out=generated --mypy_grpc_out=generated $(PROTO_FILES)
	touch generated/taskmanager/__init__.py generated/taskmanager/v1/__init__.py

check-generated: proto
	@test -z "$$(git status --porcelain -- generated)" || \
	  { git status --porcelain -- generated; echo 'generated/ is stale: run make proto and commit'; exit 1; }

# ruff, mypy --strict, and the import-linter layering contracts (pyproject.toml).
lint: install
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check $(LINT_DIRS)
	$(BIN)/mypy service
	$(BIN)/lint-imports

# The suite starts real pgbouncer, nginx and Node clients: install what is missing first.
test: install system-deps examples-node
	$(BIN)/pytest $(PYTEST_ARGS)

migrate: install
	$(BIN)/taskservice migrate

run: install
	$(BIN)/taskservice serve --migrate

# Each bench in turn (BENCH=perf for one); BENCH_ARGS go to each, e.g. --keep or --smoke.
# The perf bench drives h2load and wrk (system-deps) and the bench extra's packages (install).
bench: install system-deps
	for name in $(BENCH); do $(PY) -m bench $$name $(BENCH_ARGS) || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

buf-lint: install
	$(BUF) lint

# The against side is built from `git archive` plus today's buf.yaml and vendored
# protos/google/ (for commits made before either was committed), so it works offline.
buf-breaking: install
	@set -euo pipefail; \
	if ! git rev-parse --quiet --verify '$(BUF_AGAINST)^{commit}' >/dev/null \
	    && [ "$$(git rev-parse --is-shallow-repository)" = true ]; then \
	  git fetch --quiet --deepen=1 || true; \
	fi; \
	if ! git rev-parse --quiet --verify '$(BUF_AGAINST)^{commit}' >/dev/null; then \
	  if [ "$$(git rev-list --count HEAD 2>/dev/null || echo 0)" -le 1 ] \
	      && [ "$$(git rev-parse --is-shallow-repository)" != true ]; then \
	    echo "buf-breaking: skipped: no previous commit to compare with"; \
	    exit 0; \
	  fi; \
	  echo "buf-breaking: commit $(BUF_AGAINST) not found (shallow clone? fetch more history)" >&2; \
	  exit 1; \
	fi; \
	if [ -z "$$(git ls-tree -d '$(BUF_AGAINST)' protos)" ]; then \
	  echo "buf-breaking: skipped: $(BUF_AGAINST) has no protos/"; \
	  exit 0; \
	fi; \
	against=$$(mktemp -d); trap 'rm -rf "$$against"' EXIT; \
	git archive '$(BUF_AGAINST)' protos | tar -x -C "$$against"; \
	cp buf.yaml "$$against"/; \
	cp -R -n protos/google "$$against"/protos/; \
	echo "buf breaking: protos/ against $(BUF_AGAINST) ($$(git rev-parse --short '$(BUF_AGAINST)'))"; \
	$(BUF) breaking --against "$$against"

# npm ci only when package-lock.json changed (npm ci writes node_modules/.package-lock.json);
# the packages need no install scripts.
examples-node: examples/node/node_modules/.package-lock.json

examples/node/node_modules/.package-lock.json: examples/node/package.json examples/node/package-lock.json
	cd examples/node && npm ci --ignore-scripts --no-audit --no-fund

# Debian packages from .ci/debian-packages whose command is missing (apt-get).
system-deps:
	bash .ci/system-deps

docs: install
	$(PY) -m service.runtime.settings_table README.md
