# Set-up, demo and tests. `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of PyTorch by default (a GPU machine whose Python already has torch keeps its own, see below).
TORCH ?= torch==2.13.0

.PHONY: setup browser demo test lint bench bench-structured bench-corpus bench-peers bench-vs-llmcompressor bench-llamacpp clean

setup: $(VENV)/.installed

# A Python that already has a CUDA-enabled torch lends it to the venv instead of installing another one.
$(VENV)/.installed: pyproject.toml
	@if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/prunekit prune smollm2-135m --method wanda --sparsity 0.5 --calib-samples 64 \
		--out out/smollm2-wanda50 --overwrite

# PRUNEKIT_REQUIRE_BROWSER: the HTML report's browser test fails, rather than skips, without Chromium.
test: setup browser
	$(BIN)/ruff check src tests bench
	PRUNEKIT_REQUIRE_BROWSER=1 $(BIN)/python -m pytest

# Headless Chromium and its driver (Debian packages) for the HTML report's browser test; apt-get update only
# when the install fails, since the package lists are usually fresh enough.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	chromium chromium-driver
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if command -v apt-get >/dev/null; then \
			$(APT_INSTALL) || { $(SUDO) apt-get update -q && $(APT_INSTALL); }; \
		else \
			echo "no apt-get here: install chromium and chromedriver yourself for tests/test_report.py"; \
		fi; \
	fi

bench: setup
	$(BIN)/python bench/fidelity.py
	$(BIN)/python bench/prune_speed.py

bench-structured: setup
	$(BIN)/python bench/structured.py

bench-corpus: setup
	$(BIN)/python bench/corpus_quality.py
	$(BIN)/python bench/data_scale.py

# llm-compressor pins an older transformers, so the side-by-side benchmark runs it from its own venv.
bench-peers: bench/.venv-peers/.installed
bench/.venv-peers/.installed: bench/peers-requirements.txt
	$(PYTHON) -m venv bench/.venv-peers
	bench/.venv-peers/bin/python -m pip install -q "$(TORCH)"
	bench/.venv-peers/bin/python -m pip install -q -r bench/peers-requirements.txt
	touch $@

bench-vs-llmcompressor: setup bench-peers
	$(BIN)/python bench/vs_llmcompressor.py

# llama.cpp's llama-bench and llama-perplexity, built once (CPU only, -j2) from the sources vendored in the
# llama-cpp-python sdist into a cache outside the repository; a second run finds the binaries and builds nothing.
# Needs cmake and a C++ compiler: installed with apt-get when missing. LLAMACPP_ARGS="--threads 2 --type q8_0" passes
# options to bench/llamacpp.py.
LLAMACPP_VERSION ?= 0.3.36
LLAMACPP_DIR := $(HOME)/.cache/prunekit/llama.cpp/$(LLAMACPP_VERSION)
LLAMACPP_SRC := $(LLAMACPP_DIR)/llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp
LLAMACPP_BIN := $(LLAMACPP_DIR)/build/bin
$(LLAMACPP_BIN)/llama-bench:
	@command -v cmake >/dev/null && command -v c++ >/dev/null || { \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends cmake g++ || \
		{ $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends cmake g++; }; }
	mkdir -p $(LLAMACPP_DIR)
	[ -f $(LLAMACPP_DIR)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz ] || $(BIN)/python -m pip download -q \
		--no-binary :all: --no-deps llama-cpp-python==$(LLAMACPP_VERSION) -d $(LLAMACPP_DIR)
	[ -d $(LLAMACPP_SRC) ] || tar xzf $(LLAMACPP_DIR)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(LLAMACPP_DIR)
	cmake -S $(LLAMACPP_SRC) -B $(LLAMACPP_DIR)/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
		-DGGML_CUDA=OFF -DGGML_METAL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
		-DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF
	cmake --build $(LLAMACPP_DIR)/build -j2 --target llama-bench llama-perplexity

bench-llamacpp: setup $(LLAMACPP_BIN)/llama-bench
	$(BIN)/python bench/llamacpp.py --bin $(LLAMACPP_BIN) $(LLAMACPP_ARGS)

clean:
	rm -rf $(VENV) out bench/results
