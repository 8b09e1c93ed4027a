# Everything runs from the project's own .venv, (re)installed only when
# pyproject.toml changes (stamp file), so `make test` is cheap when nothing did.
# `make test ARGS="-k embedded -x"` passes extra arguments to pytest.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv run test bench-engine bench-api bench-archiver bench-notifier reliability

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/resv demo

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

bench-engine: $(STAMP)
	$(PY) -m benchmarks.engine

bench-api: $(STAMP)
	$(PY) -m benchmarks.api

bench-archiver: $(STAMP)
	$(PY) -m benchmarks.archiver

bench-notifier: $(STAMP)
	$(PY) -m benchmarks.notifier

reliability: $(STAMP)
	$(PY) -m tests.reliability
