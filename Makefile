# Two commands do all the set-up from a fresh clone:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# test workers: xdist processes (2 cores here); each worker runs torch with one thread
WORKERS ?= 2

.PHONY: install test demo bench clean

$(STAMP): requirements.txt setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(WORKERS) --dist loadgroup tests

demo: $(STAMP)
	$(PY) -m pipeline demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
