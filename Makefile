# Everything sets itself up: a .venv is created on first use and refreshed when
# pyproject.toml changes. Only Python 3.10+ and make are needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
UWSGI_STAMP := $(VENV)/.installed-uwsgi
FLOORS_VENV := .venv-floors
FLOORS_STAMP := $(FLOORS_VENV)/.installed

.PHONY: test test-floors demo bench lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The benchmarks also need the pinned peers they compare against (the bench extra).
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

# uWSGI forks its workers as no pure-Python server does (in C, without Python's
# fork hooks), and one end-to-end test runs it. It comes only as source, built
# in about 20 s with a C compiler and Python's headers: where that fails, the
# suite runs without it (that test is skipped) rather than not at all, and
# `make demo` never needs it. Delete the stamp to try again.
$(UWSGI_STAMP): $(STAMP)
	@$(BIN)/python -m pip install --quiet 'uwsgi>=2.0.23' || echo "note: uWSGI could not be \
	built here (no C compiler or Python headers?); its end-to-end test will be skipped. \
	To retry: rm $(UWSGI_STAMP)"
	@touch $(UWSGI_STAMP)

test: $(STAMP) $(UWSGI_STAMP)
	$(BIN)/python -m pytest $(ARGS)

# The suite at the oldest version pyproject.toml allows of each direct
# dependency (uv's lowest-direct resolution; uv itself comes from PyPI into
# that venv). Made anew whenever pyproject.toml changes, so a raised floor is
# never hidden by a newer version left from before.
$(FLOORS_STAMP): pyproject.toml
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install --quiet uv
	$(FLOORS_VENV)/bin/uv pip install --quiet --python $(FLOORS_VENV)/bin/python \
		--resolution lowest-direct -e '.[dev]'
	@touch $(FLOORS_STAMP)

test-floors: $(FLOORS_STAMP)
	$(FLOORS_VENV)/bin/python -m pytest $(ARGS)

demo: $(STAMP)
	$(BIN)/python -m examples.demo $(ARGS)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(FLOORS_VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
