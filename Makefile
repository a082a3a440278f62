# Set-up and checks. Each target creates the virtualenv it needs on first use.
#   make demo     enqueue a few multi-task jobs, run them, print their history
#   make test     the test suite (ruff, then pytest) against a real PostgreSQL,
#                 after installing PgBouncer (Debian's package) when it is missing
#   make faults   the fault suite: worker processes under kill -9, SIGTERM, a
#                 PostgreSQL restart and cut connections, with a table of results
# DATABASE_URL=postgres://... selects a server; without it an embedded
# PostgreSQL starts in .pgdata/. PYTHON and DJANGO choose the interpreter and
# the Django release, e.g. make test PYTHON=python3.13 DJANGO='Django>=6.1,<6.2'.

PYTHON ?= python3
DJANGO ?= Django>=5.2,<5.3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint faults pgbouncer

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' '$(DJANGO)'
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint pgbouncer
	$(BIN)/python -m pytest

# tests/test_pgbouncer.py runs a PgBouncer of its own; Debian's package, installed
# as root (CI and this project's machines; about 10 s). Elsewhere install it first.
pgbouncer:
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer; } || \
		{ echo "make test needs pgbouncer (Debian: apt-get install pgbouncer)"; exit 1; }

demo: $(VENV)/.installed
	$(BIN)/python demo/run.py

faults: $(VENV)/.installed
	$(BIN)/python faults/run.py
