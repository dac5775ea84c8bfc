# mss-relay — the two commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint typecheck pytest pki bench clean wheel install

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

var/pki/server.pem: | $(STAMP)
	$(BIN)/mss-relay dev-pki var/pki --hostname localhost

var/pki/issuer-dev.jwks.json: | $(STAMP)
	$(BIN)/mss-relay dev-issuer var/pki

pki: var/pki/server.pem var/pki/issuer-dev.jwks.json

## Set everything up and run the daemon in the foreground on the demo config.
demo: $(STAMP) var/pki/server.pem var/pki/issuer-dev.jwks.json
	mkdir -p var/demo
	$(BIN)/mss-relay check-config --config config/demo.toml
	$(BIN)/mss-relay serve --config config/demo.toml --log-format console

## Set up and run ruff, mypy and pytest (store tests on SQLite and PostgreSQL).
test: $(STAMP) check

check: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers (pytest-xdist): most tests wait on sockets, subprocesses and timers, so
# two share the 2 cores of CI's machine well (900 s serial, 672 s with -n 2). Each test
# has its own tmp_path, PostgreSQL schema and ports (tests/harness.py: each worker its
# own slice). One test by hand: .venv/bin/pytest -q tests/PATH (no workers).
pytest: $(STAMP)
	$(BIN)/pytest -q -n 2

bench: $(STAMP)
	$(BIN)/python -m bench.store_load --engine sqlite
	$(BIN)/python -m bench.smtp_load --engine sqlite --messages 2000 --size 10240 --concurrency 10 --mode plain
	$(BIN)/python -m bench.smtp_load --engine sqlite --messages 500 --mode starttls --big-message-mb 25
	@echo "more: bench/README.md"

## The wheel (dist/), and what it carries besides the code (policies, config, systemd).
wheel: $(STAMP)
	rm -rf build  # setuptools builds in the tree: no file of an earlier build in this one
	$(BIN)/pip wheel --quiet --no-deps -w dist .
	$(BIN)/python -m zipfile -l dist/mss_relay-*.whl | grep relay/share/

## Lay out the command, config, policies, state folder and systemd files (see
## relay/install.py): make install DESTDIR=/tmp/stage [PREFIX=/usr/local]. The command
## it installs is a launcher for this checkout's .venv.
PREFIX  ?= /
DESTDIR ?=
install: $(STAMP)
	$(BIN)/mss-relay install --prefix $(PREFIX) $(if $(DESTDIR),--destdir $(DESTDIR))

clean:
	rm -rf $(VENV) var dist .mypy_cache .ruff_cache .pytest_cache
