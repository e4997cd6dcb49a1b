# One named command per chore, the same locally and in CI.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PROTO_FILES := $(shell find protos -name '*.proto' | sort)
# googleapis-common-protos ships google/api/*.proto next to its modules.
GOOGLEAPIS_INCLUDE = $(shell $(PY) -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))')

.PHONY: install proto check-generated lint test run migrate bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

proto: install
	rm -rf generated/taskmanager
	mkdir -p generated
	PATH="$(abspath $(BIN)):$$PATH" $(PY) -m grpc_tools.protoc -I protos -I $(GOOGLEAPIS_INCLUDE) \
	  --python_out=generated --grpc_python_out=generated \
	  --mypy_out=generated --mypy_grpc_out=generated $(PROTO_FILES)
	touch generated/taskmanager/__init__.py generated/taskmanager/v1/__init__.py

check-generated: proto
	@test -z "$$(git status --porcelain -- generated)" || \
	  { git status --porcelain -- generated; echo 'generated/ is stale: run make proto and commit'; exit 1; }

lint: install
	$(BIN)/ruff check service tests migrations bench
	$(BIN)/ruff format --check service tests migrations bench
	$(BIN)/mypy service tests

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

migrate: install
	$(BIN)/taskservice migrate

run: install
	$(BIN)/taskservice serve --migrate

bench: install
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
