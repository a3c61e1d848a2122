# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export QUAMBA_EDGE_CACHE ?= $(CURDIR)/.cache
# Torch threads for the demo and the quality table (benchmarks that time things use one thread).
THREADS ?= 2

.PHONY: venv corpus demo test lint quality clean

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PY) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/pip.log) ..."
	@$(BIN)/pip install -c constraints-cpu.txt -e '.[dev]' > $(VENV)/pip.log 2>&1 || (tail -30 $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import torch, transformers, quamba_edge; print('torch', torch.__version__)"
	touch $@

venv: $(BIN)/.installed

corpus: venv
	$(BIN)/python calib/build_corpus.py

# Calibrate the bundled model with the naive and Quamba recipes, evaluate fp32 / naive / Quamba on the
# held-out novel, print the table.
demo: corpus
	$(BIN)/quamba-edge calibrate --model default --recipe naive --out out/naive --threads $(THREADS)
	$(BIN)/quamba-edge calibrate --model default --recipe quamba --out out/quamba --threads $(THREADS)
	$(BIN)/python benchmarks/quality.py --models default out/naive out/quamba --threads $(THREADS) \
		--max-samples $(DEMO_EVAL_SAMPLES) --out out/demo-quality.json
	$(BIN)/quamba-edge generate out/quamba --max-new-tokens 160

DEMO_EVAL_SAMPLES ?= 128

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check quamba_edge tests benchmarks calib

# The committed quality table (benchmarks/results/quality.json): every recipe, the whole held-out novel.
quality: corpus
	$(BIN)/python benchmarks/quality.py --all-recipes --threads $(THREADS) --markdown --out benchmarks/results/quality.json

clean:
	rm -rf out .pytest_cache
