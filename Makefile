# One venv, built from pyproject.toml; torch is pinned to the 2.13.0 CPU build on the machine's disk.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(PY):
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	@# wandb (pulled in by transformer-lens) installs a console script also named `wb`: keep ours.
	grep -q "workbench.cli" $(VENV)/bin/wb || $(PY) -m pip install --quiet --no-deps --force-reinstall -e .
	touch $(STAMP)

install: $(STAMP)

# Kernel tests run in their own process: TRITON_INTERPRET=1 must be set before triton is first imported.
test: $(STAMP)
	$(PY) -m pytest -q tests/unit tests/integration
	$(PY) -m pytest -q tests/kernels

# The main job on built-in data: corpus + tokenizer, 2,000 steps of the tiny LLaMA with a checkpoint every
# 100 (plus the early log-spaced ones), a look at the run, then every analysis at every checkpoint, the
# held-out loss per domain as a table and a plot, and the canaries' step x frequency memorisation heatmap.
DEMO_RUN ?= runs/demo
demo: $(STAMP)
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/wb train --preset tiny --max-steps 2000 --every 100 --out $(DEMO_RUN)
	$(VENV)/bin/wb info $(DEMO_RUN)
	$(VENV)/bin/wb verify $(DEMO_RUN)
	$(VENV)/bin/wb analyze $(DEMO_RUN)
	$(VENV)/bin/wb results $(DEMO_RUN)
	$(VENV)/bin/wb results $(DEMO_RUN) loss --plot $(DEMO_RUN)-loss.html
	$(VENV)/bin/wb results $(DEMO_RUN) memorization --plot $(DEMO_RUN)-memorization.html

bench: $(STAMP)
	$(PY) benchmarks/store.py

clean:
	rm -rf $(VENV) build *.egg-info
