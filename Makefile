# The two commands: `make run` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench venv clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/volgraph run $(ARGS)

# The suite over the machine's cores (pytest-xdist, at most TEST_WORKERS), then the tests marked
# `serial` alone: their outcome depends on having the machine to itself. Either part may select no
# test (pytest's exit code 5) when PYTEST_ARGS picks tests of the other part only.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(PY) -m pytest -n auto --maxprocesses $(TEST_WORKERS) --dist worksteal -m "not serial" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PY) -m pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]' || echo "some bench peers did not install; their rows will say so"
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .data
