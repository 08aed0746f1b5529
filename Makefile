# make demo  -- create .venv if needed, build, run the demo
# make test  -- create .venv if needed, build, lint, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pyengine-installed
DEMO   ?= demo-out

.PHONY: install demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall whenever the build inputs change (the C++ core is compiled by pip).
$(STAMP): $(PY) pyproject.toml CMakeLists.txt ci/constraints.txt $(wildcard csrc/*)
	$(PY) -m pip install --quiet -c ci/constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/pyengine info
	$(VENV)/bin/pyengine demo --out $(DEMO)

lint: install
	$(PY) -m ruff check pyengine tests benchmarks tools

test: install lint
	$(PY) -m pytest

bench: install
	$(VENV)/bin/pyengine bench

clean:
	rm -rf build $(VENV) $(DEMO) .pytest_cache .ruff_cache
