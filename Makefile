# `make demo` and `make test` build .venv themselves: torch (local CPU wheel) first, so pip never pulls CUDA.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
TORCH := torch==2.13.0

.PHONY: demo test slow fuzz lint bench bench-models interop clean venv browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: venv
	$(BIN)/wquant study minilm --budget 4.0 --out demo-study --force

# the study report's test opens it in headless Chromium; install it where the machine allows (root + apt),
# otherwise that one test skips
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium is not installed and cannot be installed here: the report's browser test will skip"

test: venv browser
	$(BIN)/python -m pytest -m "not slow"

# real-model checks (MiniLM cosine vs the published 0.9499, allocation and GPTQ end to end): minutes each
slow: venv
	$(BIN)/python -m pytest -m slow

fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests -k fuzz

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# each script runs wquant beside its peer library in one process and rewrites its section of BENCHMARKS.md
bench: venv
	$(BIN)/python -m pip install -q -e ".[dev,bench]" $(TORCH)
	$(BIN)/python benchmarks/formats_speed.py --write
	$(BIN)/python benchmarks/coding_speed.py --write
	$(BIN)/python benchmarks/theory_speed.py --write
	$(BIN)/python benchmarks/gptq_speed.py --write
	$(BIN)/python benchmarks/peers_tensors.py --write

# MiniLM and the causal testbed, wquant (RTN, coded, GPTQ, NUPES, Fisher allocation) beside bitsandbytes, hqq,
# torchao and optimum-quanto: about an hour on a shared 2-core machine; rows are cached in ~/.cache/wquant/bench-models
# (--fresh recomputes), `--quick` is a few-minute smoke run
bench-models: venv
	$(BIN)/python -m pip install -q -e ".[dev,bench]" $(TORCH)
	nice -n 10 $(BIN)/python benchmarks/models.py --paragraphs 300

# llama.cpp runs the GGUF files wquant exports (testbed logits KL, MiniLM embedding cosine). Not part of `make test`:
# the first run builds llama.cpp from the llama-cpp-python sdist into ~/.cache/wquant/llama-cpp (~15 min on 2 cores)
interop: venv
	nice -n 10 $(BIN)/python benchmarks/interop_llamacpp.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
