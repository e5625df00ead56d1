# One venv in .venv, built with pip from constraints.txt; every target goes through it.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
SHARED  ?= ../shared/data
VOCAB   ?= $(SHARED)/vocab/bert-base-cased-vocab.txt
SHARDS  ?= shards
RUN     ?= runs/tiny
CONFIG  ?= tiny
PIPELINE_ARGS ?=
TRAIN_ARGS ?=
ABLATE_ARGS ?=

.PHONY: install test bench preprocess train demo ablate lint clean mutate

install: $(VENV)/.installed

# Idempotent: re-runs only when the dependency list changes.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench,lint,demo]'
	touch $@

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) bench/bench_masking.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_trainer.py

preprocess: install
	$(PY) -m pipeline \
	  --input 'wikiextractor:$(SHARED)/wiki/enwiki-sample-extracted.txt' \
	  --input 'text:$(SHARED)/books/gutenberg/*.txt' \
	  --input 'text:$(SHARED)/books/gutenberg-raw/*.txt' \
	  --vocab $(VOCAB) --output $(SHARDS) --num-shards 8 --overwrite $(PIPELINE_ARGS)

train: install
	$(PY) -m trainer --config $(CONFIG) --data $(SHARDS) --out $(RUN) $(TRAIN_ARGS)

demo: install
	$(PY) -m demo

# The grid needs shards: build them from ../shared/data first if there are none.
ablate: install
	test -f $(SHARDS)/manifest.json || $(MAKE) preprocess
	$(PY) -m trainer.ablate --data $(SHARDS) $(ABLATE_ARGS)

# Mutation testing of the core against the fast tests that cover each module (docs/testing.md);
# hours on 2 cores, not for CI. MUTATE_GROUPS: some of pipeline trainer masking masking-given masking-stats.
MUTATE_GROUPS ?=
MUTATE_JOBS ?= 1
mutate: install
	test -x $(VENV)/bin/mutmut || $(PY) -m pip install --quiet -c constraints.txt -e '.[mutate]'
	$(PY) tests/mutate.py run $(MUTATE_GROUPS) --jobs $(MUTATE_JOBS)

lint: install
	$(PY) -m ruff check masking pipeline trainer demo tests bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache *.egg-info
