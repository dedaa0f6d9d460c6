# Two commands: `make demo` and `make test`. Both set up .venv first if needed.
# TORCH_SPEC picks the PyTorch build: the default is the CPU build this project is tested with;
# on a GPU machine use e.g. `make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_DATA ?= data/demo
DEMO_RUN ?= runs/demo
STAMP := $(VENV)/.installed

.PHONY: setup demo distill test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/noisytag demo --data $(DEMO_DATA) --out $(DEMO_RUN)

# After `make demo`: its ensemble distilled into one fast student (runs/demo-student), compared with it.
distill: $(STAMP)
	$(BIN)/noisytag distill $(DEMO_RUN) -o $(DEMO_RUN)-student -c configs/demo.yaml

test: $(STAMP)
	@# tests/test_serve.py drives the system Chromium (never a downloaded one); without it that one test skips
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
		|| (apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null 2>&1 \
		|| (sudo -n apt-get update -qq && sudo -n apt-get install -y -qq chromium) >/dev/null 2>&1 \
		|| echo "no chromium: the browser test will be skipped"
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check noisytag tests benchmarks
	$(BIN)/ruff format --check noisytag tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_infer.py

clean:
	rm -rf $(VENV) runs data .pytest_cache
