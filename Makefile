# Set-up, demo and tests. `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of PyTorch by default (a GPU machine whose Python already has torch keeps its own, see below).
TORCH ?= torch==2.13.0

.PHONY: setup browser demo test lint bench bench-structured bench-corpus bench-peers bench-vs-llmcompressor clean

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

clean:
	rm -rf $(VENV) out bench/results
