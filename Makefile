# Sluice: `make run` serves the gateway, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
LOCK   := requirements.lock
STAMP  := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install lock run serve test check lint pytest bench browser clean

# Every dependency (dev tools included) from the lock, each file checked against
# its hash; then Sluice itself, built with the locked setuptools.
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

# Re-resolve pyproject.toml into the lock (pins kept; LOCK_FLAGS=--upgrade moves them).
lock: install
	$(BIN)/pip-compile --quiet --generate-hashes --extra dev --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links $(LOCK_FLAGS) --output-file $(LOCK) pyproject.toml

# The embedded default: SQLite, in-process stream log, the demo provider.
run: export SLUICE_DEV ?= 1
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py sluice_demo --host $(HOST) --port $(PORT)
	$(BIN)/python manage.py sluice_serve --host $(HOST) --port $(PORT)

# Production serving (settings from the environment, no demo seeding).
serve: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py sluice_serve --host $(HOST) --port $(PORT)

# What the tests drive besides Python: a browser, and nginx as docker-compose runs it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null || \
	  echo "warning: could not install chromium; browser tests will fail"; }
	@test -x /usr/sbin/nginx || { \
	  echo "installing Debian's nginx-light for the proxy tests"; \
	  (apt-get install -y -qq nginx-light || (apt-get update -qq && apt-get install -y -qq nginx-light)) >/dev/null && \
	  { /usr/sbin/nginx -s stop 2>/dev/null; true; } || \
	  echo "warning: could not install nginx; the proxy tests will be skipped"; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	SLUICE_DEV=1 $(BIN)/mypy .
	$(BIN)/lint-imports --no-cache --no-logo

check: lint
	SLUICE_DEV=1 $(BIN)/python manage.py check --fail-level WARNING
	SLUICE_DEV=1 $(BIN)/python manage.py makemigrations --check --dry-run

pytest: install browser
	$(BIN)/pytest

test: check pytest

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
