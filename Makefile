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
# Corpus copies for the pipeline scaling bench (the issue-12 table used 1,10,30: ~15 CPU-minutes more).
PIPELINE_SIZES ?= 1,3
SQUAD   ?= $(SHARED)/squad
SQUAD_RUN ?= $(RUN)
SQUAD_OUT ?= squad-out
SQUAD_ARGS ?=

.PHONY: install test bench preprocess train demo ablate squad lint clean gpu-shards mutate

install: $(VENV)/.installed

# Idempotent: re-runs only when the dependency list changes.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench,lint,wikidump,demo,dask]'
	touch $@

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) bench/bench_masking.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_pipeline_scale.py --sizes $(PIPELINE_SIZES)
	$(PY) bench/bench_trainer.py
	$(PY) bench/bench_squad.py

# The paper's recipe on all cores: Wikipedia's own dump (--format wikidump) + books -> shards.
# VOCAB_FROM_CORPUS=1 first learns a WordPiece vocabulary from the same
# inputs (pipeline.vocab) into $(SHARDS)-vocab/ and tokenizes with it; by default the paper's
# bert-base-cased vocabulary is used. With annotation the local runner starts one worker process per core.
PREPROCESS_INPUTS ?= --input 'wikidump:$(SHARED)/wiki/enwiki-sample-pages-articles.xml.bz2' \
	  --input 'text:$(SHARED)/books/gutenberg/*.txt' --input 'text:$(SHARED)/books/gutenberg-raw/*.txt'
VOCAB_FROM_CORPUS ?=
preprocess: install
ifneq ($(VOCAB_FROM_CORPUS),)
	$(PY) -m pipeline.vocab $(PREPROCESS_INPUTS) --output $(SHARDS)-vocab --bert-layout
	$(PY) -m pipeline $(PREPROCESS_INPUTS) --tokenizer $(SHARDS)-vocab/tokenizer.json \
	  --output $(SHARDS) --num-shards 8 --overwrite $(PIPELINE_ARGS)
else
	$(PY) -m pipeline $(PREPROCESS_INPUTS) --vocab $(VOCAB) --output $(SHARDS) --num-shards 8 --overwrite $(PIPELINE_ARGS)
endif

train: install
	$(PY) -m trainer --config $(CONFIG) --data $(SHARDS) --out $(RUN) $(TRAIN_ARGS)

demo: install
	$(PY) -m demo

# The grid needs shards: build them from ../shared/data first if there are none.
ablate: install
	test -f $(SHARDS)/manifest.json || $(MAKE) preprocess
	$(PY) -m trainer.ablate --data $(SHARDS) $(ABLATE_ARGS)

# Inputs of bench/gpu_check.sh (the GPU machine has no ../shared and maybe no pytest): 3 MB of real
# 512-token blocks of the Wikipedia sample, and pytest copied from .venv (pure Python). Both under build/.
gpu-shards: install
	$(PY) -m pipeline --input 'wikiextractor:$(SHARED)/wiki/enwiki-sample-extracted.txt' --vocab $(VOCAB) \
	  --output build/gpu-shards --block-size 512 --no-annotate --num-shards 2 --overwrite
	rm -rf build/gpu-pydeps && mkdir -p build/gpu-pydeps
	cd "$$($(PY) -c 'import os, pytest; print(os.path.dirname(os.path.dirname(pytest.__file__)))')" && \
	  cp -r pytest _pytest pluggy iniconfig packaging pygments py.py $(CURDIR)/build/gpu-pydeps/

# SQuAD 1.1 and 2.0: split each dev file by article, fine-tune $(SQUAD_RUN) on one half, score the other.
# Real users pass the official train/dev files to `python -m finetune squad` directly.
squad: install
	for v in v1.1 v2.0; do \
	  $(PY) -m finetune.split $(SQUAD)/dev-$$v.json --out $(SQUAD_OUT)/split-$$v && \
	  $(PY) -m finetune squad --model $(SQUAD_RUN) --train $(SQUAD_OUT)/split-$$v/train.json \
	    --dev $(SQUAD_OUT)/split-$$v/heldout.json --out $(SQUAD_OUT)/$$v $(SQUAD_ARGS) || exit 1; \
	done

# Mutation testing of the core against the fast tests that cover each module (docs/testing.md);
# hours on 2 cores, not for CI. MUTATE_GROUPS: some of pipeline trainer masking masking-given masking-stats.
MUTATE_GROUPS ?=
MUTATE_JOBS ?= 1
mutate: install
	test -x $(VENV)/bin/mutmut || $(PY) -m pip install --quiet -c constraints.txt -e '.[mutate]'
	$(PY) tests/mutate.py run $(MUTATE_GROUPS) --jobs $(MUTATE_JOBS)

lint: install
	$(PY) -m ruff check contract masking pipeline trainer finetune demo tests bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache *.egg-info
