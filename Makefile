# kerastx: the user's interface. Every target is one call of the `kerastx` CLI.
#   make train [EXP=experiments/x.yaml] [SET="a.b=1 c=2"]   train (or resume) an experiment
#   make test                                             install and run the test suite
# See README.md for the rest.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
KTX    := $(PY) -m kerastx
EXP    ?= experiments/quickstart.yaml
SET    ?=
SETS   := $(foreach s,$(SET),--set $(s))
RUN    ?= runs/$(basename $(notdir $(EXP)))
PORT   ?= 6006
PYTEST_ARGS ?=

.PHONY: install train test lint format evaluate predict export tensorboard validate \
        schema bench prepare clean distclean help

help:
	@sed -n '1,5p' Makefile

# Idempotent: reinstalls only when the package metadata changed.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(KTX) train $(EXP) $(SETS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check kerastx tests
	$(VENV)/bin/ruff format --check kerastx tests

format: install
	$(VENV)/bin/ruff check --fix kerastx tests
	$(VENV)/bin/ruff format kerastx tests

evaluate: install
	$(KTX) evaluate $(RUN) $(SETS)

# make predict [RUN=runs/quickstart] [INPUT=words.txt]  (default: reads stdin)
predict: install
	$(KTX) predict $(RUN) $(if $(INPUT),--input $(INPUT))

export: install
	$(KTX) export $(RUN)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs --host 127.0.0.1 --port $(PORT)

validate: install
	$(KTX) validate $(EXP) $(SETS)

schema: install
	$(KTX) schema -o experiments/schema.json

bench: install
	$(KTX) bench

# Tokenize the training corpora once into run_dir/prepared/ (optional; resumable).
prepare: install
	$(KTX) prepare $(EXP) $(SETS)

clean:
	rm -rf runs bench .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) data
