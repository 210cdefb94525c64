# Two commands for a fresh machine: `make run BACKEND=URL` and `make test`.  Everything they need is
# created here (CI runs on a clean clone with no venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BACKEND ?=
LISTEN ?= tcp:11434:interface=127.0.0.1
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

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]' $(EDITABLE)
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	@if [ -z "$(BACKEND)" ]; then \
	  echo "usage: make run BACKEND=http://HOST:PORT/v1   (the OpenAI-compatible backend to serve)"; exit 2; fi
	$(BIN)/twistd --nodaemon --pidfile= ollamaproxy --backend "$(BACKEND)" --listen "$(LISTEN)"

test: $(VENV)/.test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest --cov --cov-report=term-missing -q

fmt: $(VENV)/.test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .coverage .coverage.* .mypy_cache .ruff_cache build *.egg-info twisted/plugins/dropin.cache
