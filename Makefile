# Set-up and checks. Each target creates the virtualenv it needs on first use.
#   make demo     enqueue a few multi-task jobs, run them, print their history
#   make test     the test suite (ruff, then pytest) against a real PostgreSQL
#   make faults   the fault suite: worker processes under kill -9, SIGTERM, a
#                 PostgreSQL restart and cut connections, with a table of results
# DATABASE_URL=postgres://... selects a server; without it an embedded
# PostgreSQL starts in .pgdata/. PYTHON and DJANGO choose the interpreter and
# the Django release, e.g. make test PYTHON=python3.13 DJANGO='Django>=6.1,<6.2'.

PYTHON ?= python3
DJANGO ?= Django>=5.2,<5.3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint faults

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' '$(DJANGO)'
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

demo: $(VENV)/.installed
	$(BIN)/python demo/run.py

faults: $(VENV)/.installed
	$(BIN)/python faults/run.py
