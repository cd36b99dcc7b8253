# Two commands set up and run everything on a fresh machine:
#   make book   build the site into _build/html, executing every chapter in full mode
#   make test   the whole test suite (lint, lib tests, notebooks in smoke mode, the site in a browser)
# Also: make lab (JupyterLab on the notebooks), make assignments (course assignments with
# otter-grader, into _build/assignments), make clean.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: book test lab assignments clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

book: $(STAMP)
	$(PY) tools/build_book.py --mode full

test: $(STAMP)
	$(PY) -m pytest

assignments: $(STAMP)
	$(PY) tools/make_assignments.py

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf _build
