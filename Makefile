# make demo  -- create .venv if needed, build, run the demo
# make test  -- create .venv if needed, build, lint, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pyengine-installed
DEMO   ?= demo-out

.PHONY: install demo test lint bench clean gpu-wheels gpu-rehearsal

# The wheels the GPU machine's image lacks (benchmarks/gpu_wheels.txt), for its Python 3.12.
GPU_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
                   manylinux2014_x86_64 manylinux1_x86_64,--platform $(p))

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

# benchmarks/gpu_check.sh: `make gpu-wheels` once, then carry .whl to the GPU machine.
gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp $(GPU_PLATFORMS) -d .whl -r benchmarks/gpu_wheels.txt

gpu-rehearsal: gpu-wheels
	bash benchmarks/gpu_rehearsal.sh

clean:
	rm -rf build $(VENV) $(DEMO) .pytest_cache .ruff_cache
