# Two commands do all the set-up from a fresh clone:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# test workers: xdist processes (2 cores here); each worker runs torch with one thread
WORKERS ?= 2

.PHONY: install lint test demo bench clean

$(STAMP): requirements.txt setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# static checks (tool versions pinned in requirements.txt, settings in pyproject.toml)
lint: $(STAMP)
	$(PY) -m ruff check pipeline tests benchmarks
	$(PY) -m ruff format --check pipeline tests benchmarks
	$(PY) -m mypy pipeline

# the static checks, then the test suite and the docstring Examples of pipeline/ (doctests)
test: lint
	$(PY) -m pytest -q -n $(WORKERS) --dist loadgroup --doctest-modules tests pipeline

demo: $(STAMP)
	$(PY) -m pipeline demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache .mypy_cache
