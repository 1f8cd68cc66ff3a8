# Sophon: `make run` starts a server, `make test` runs the tests. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench bench-smoke lint system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the sandbox needs (bubblewrap, python3 and pip for workloads, git).
system-deps:
	@./scripts/system-deps

run: system-deps $(STAMP)
	@$(BIN)/sophon users add admin 2>/dev/null \
		&& echo "^ API key for user 'admin' (shown once). More keys: $(BIN)/sophon users add NAME" \
		|| echo "Create an API key with: $(BIN)/sophon users add NAME"
	$(BIN)/sophon serve

test: system-deps $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/pytest -q

bench: system-deps $(STAMP)
	$(BIN)/python bench/run.py

# Every benchmark once, with few samples: proves they run, measures nothing (CI runs it).
bench-smoke: system-deps $(STAMP)
	$(BIN)/python bench/run.py --quick > /dev/null

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
