# MergeScope: `make run` serves the app, `make test` runs lint + the whole suite.
# Both create .venv and install pinned requirements first (re-installing only when they change).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
# The zoo `make run` builds and opens: core.cli.options.DEFAULT_ZOO (a test keeps the two equal; no comment
# after the value: make would keep the spaces before it in $(ZOO))
ZOO ?= styled
export OMP_NUM_THREADS ?= 2

.PHONY: run test install install-dev bench zoo lint browser clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "from core.merging.fused import warm; print(warm())"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

zoo: install
	$(PY) -m core zoo build --zoo $(ZOO)

# The app opens on the zoo it just built: the styled zoo by default, `make run ZOO=demo` for the first
# recipe's easier tasks (MERGESCOPE_DEFAULT_ZOO= to start with nothing loaded).
run: install zoo
	MERGESCOPE_DEFAULT_ZOO=$${MERGESCOPE_DEFAULT_ZOO-$(ZOO)} $(PY) -m streamlit run ui/app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

# Debian's chromium for the browser smoke test; the test skips loudly where it cannot be had.
browser:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "WARNING: could not install chromium; tests/test_browser.py will skip"; }

lint: install-dev
	$(VENV)/bin/ruff check core pages ui tests bench
	$(VENV)/bin/ruff format --check core pages ui tests bench

test: install-dev browser lint
	$(PY) -m pytest -q --timeout=900 tests

bench: install-dev
	$(PY) -m pip install --quiet -r requirements-bench.txt
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts
