# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Tests use PostgreSQL too when this is set (CI sets it), e.g.
# GUREUM_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test
export GUREUM_TEST_DATABASE_URL

.PHONY: install sysdeps demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel; every later requirement on torch is satisfied by it.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,s3]"
	touch $(STAMP)

install: $(STAMP)

# Debian packages: bubblewrap sandboxes user code (script jobs are refused without it);
# chromium runs the dashboard's browser tests (Playwright drives /usr/bin/chromium, never a
# downloaded browser).
sysdeps:
	@command -v bwrap >/dev/null 2>&1 || apt-get install -y -q bubblewrap \
		|| { apt-get update -q && apt-get install -y -q bubblewrap; } \
		|| { echo "gureum needs bubblewrap: apt-get install bubblewrap (as root)"; exit 1; }
	@test -x /usr/bin/chromium || apt-get install -y -q chromium \
		|| { apt-get update -q && apt-get install -y -q chromium; } \
		|| { echo "the browser tests need chromium: apt-get install chromium (as root)"; exit 1; }

demo: install sysdeps
	$(VENV)/bin/gureum demo

test: install sysdeps
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src

format: install
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
