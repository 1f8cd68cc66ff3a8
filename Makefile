# Sophon: `make run` starts a server, `make test` runs the tests. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench bench-smoke lint system-deps box-tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The dashboard (ui/): npm packages from the registry (package-lock.json), built into
# ui/dist, which `sophon serve` serves at /. Skipped while ui/dist is newer than its sources.
UI_STAMP   := ui/dist/.built
UI_SOURCES := $(shell find ui/src -type f 2>/dev/null) ui/index.html ui/package.json \
              ui/package-lock.json ui/tsconfig.json ui/vite.config.ts

.PHONY: ui
ui: $(UI_STAMP)

$(UI_STAMP): $(UI_SOURCES)
	@command -v npm >/dev/null 2>&1 || { echo "make ui needs node (>= 18.18) and npm" >&2; exit 1; }
	cd ui && npm ci --no-audit --no-fund --loglevel=error && npm run build
	touch $(UI_STAMP)

# boxd, the first process of every box: a static Go binary (the server also builds it
# when it finds it missing or older than its sources).
BOXD := src/sophon/box/boxd/boxd
$(BOXD): $(wildcard src/sophon/box/boxd/*.go) src/sophon/box/boxd/go.mod
	cd src/sophon/box/boxd && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o boxd .

# Debian packages the sandbox needs (bubblewrap, python3 and pip for workloads, git).
system-deps:
	@./scripts/system-deps

# What every box gets read-only under /usr: the claude CLI, Node's fetch through the
# egress door (see scripts/box-tools).
box-tools: system-deps
	@./scripts/box-tools

# Wheels the tests serve to boxes from a loopback index (a box's pip reaches no registry
# in a test): the Claude Agent SDK, pinned, for the box's python (3.11, manylinux).
WHEELHOUSE := .cache/wheelhouse
AGENT_SDK  := claude-agent-sdk==0.2.190
$(WHEELHOUSE)/.done: $(STAMP)
	mkdir -p $(WHEELHOUSE)
	$(BIN)/pip download --quiet --only-binary=:all: --python-version 3.11 \
		--implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux_2_28_x86_64 -d $(WHEELHOUSE) '$(AGENT_SDK)' \
		&& touch $@ || echo "note: no wheelhouse: the Agent SDK test will be skipped" >&2

# The base images (Debian roots, see sophon/images), built once each per machine (in
# SOPHON_IMAGES_DIR, /var/lib/sophon/images: content-addressed and shared by every
# server, the tests' included), so no session and no test waits for a build.
.PHONY: images
images: system-deps $(STAMP)
	$(BIN)/sophon images build

# The admin user is made once (its key shown that once); every run prints a new one-time
# link (15 minutes) that signs admin in to the dashboard. SOPHON_HOST/SOPHON_PORT move both.
run: system-deps box-tools $(STAMP) $(BOXD) ui images
	@$(BIN)/sophon users add admin 2>/dev/null \
		&& echo "^ API key for user 'admin' (shown once). More keys: $(BIN)/sophon users add NAME" \
		|| true
	@echo "Dashboard: open this one-time sign-in link (valid for 15 minutes):"
	@$(BIN)/sophon users sign-in-link admin
	$(BIN)/sophon serve

test: system-deps box-tools $(STAMP) $(BOXD) ui $(WHEELHOUSE)/.done images
	$(BIN)/ruff check src tests bench
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=25

bench: system-deps $(STAMP) $(BOXD)
	$(BIN)/python bench/run.py

# Every benchmark once, with few samples: proves they run, measures nothing (CI runs it).
bench-smoke: system-deps $(STAMP) $(BOXD)
	$(BIN)/python bench/run.py --quick > /dev/null

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
