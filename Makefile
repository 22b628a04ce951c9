PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench scale clean browser

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,dataflow]'
	touch $(STAMP)

test: install browser lint
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

browser:
	bash scripts/install_chromium.sh

demo: install
	$(PY) -m demo

bench: install
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.methods --model small_cnn --images 16
	$(PY) -m benchmarks.performance --before e4c0365 --before_job e9357e4  # before: the engine before on-device accumulation (e4c0365), the job before its compute thread (e9357e4)
	$(PY) -m benchmarks.faithfulness
	$(PY) -m benchmarks.score_guided
	$(PY) -m benchmarks.strategies
	$(PY) -m benchmarks.report_scale

scale: install  # a simulated large run (not part of make test): benchmarks/RESULTS.md
	$(PY) -m benchmarks.scale --images 10000,100000

clean:
	rm -rf $(VENV) build *.egg-info
