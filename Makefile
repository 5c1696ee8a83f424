# Both entry points create .venv and install everything they need (torch pinned to the CPU wheel).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 -e ".[all,test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/qingbert demo

test: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/demo.py
	$(PY) benchmarks/prepare.py
	$(PY) benchmarks/pretrain.py
	$(PY) benchmarks/finetune.py
	$(PY) -m pip install --quiet textbrewer==0.2.1.post1
	$(PY) benchmarks/distill.py
	$(PY) benchmarks/distill_quality.py
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/serve.py --workers auto
	$(PY) benchmarks/serve.py --results serve_default
	$(PY) benchmarks/objectives.py
