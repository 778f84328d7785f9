# One venv, built from pyproject.toml; torch is pinned to the 2.13.0 CPU build on the machine's disk.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install chromium test demo dashboard bench clean

$(PY):
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,harness]"
	@# wandb (pulled in by transformer-lens) installs a console script also named `wb`: keep ours.
	grep -q "workbench.cli" $(VENV)/bin/wb || $(PY) -m pip install --quiet --no-deps --force-reinstall -e .
	touch $(STAMP)

install: $(STAMP)

# The browser of the dashboard tests: Debian's chromium, driven by Playwright (no browser download, ever), and
# the fonts of Japanese text (the dashboard fetches no font).
chromium:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	@dpkg -s fonts-noto-cjk >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q fonts-noto-cjk)

# Kernel tests run in their own process: TRITON_INTERPRET=1 must be set before triton is first imported.
test: $(STAMP) chromium
	$(PY) -m pytest -q tests/unit tests/integration
	$(PY) -m pytest -q tests/kernels

# The main job on built-in data: corpus + tokenizer, 2,000 steps of the demo LLaMA (4 layers, d_model 128) with a
# checkpoint every 100 (plus the early log-spaced ones), a look at the run, every analysis at every checkpoint, the
# held-out loss per domain and the canaries' memorisation as plots, and how to open the dashboard.
DEMO_RUN ?= runs/demo
demo: $(STAMP)
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/wb train --preset demo --max-steps 2000 --every 100 --out $(DEMO_RUN)
	$(VENV)/bin/wb info $(DEMO_RUN)
	$(VENV)/bin/wb verify $(DEMO_RUN)
	$(VENV)/bin/wb analyze $(DEMO_RUN)
	$(VENV)/bin/wb results $(DEMO_RUN)
	$(VENV)/bin/wb results $(DEMO_RUN) loss --plot $(DEMO_RUN)-loss.html
	$(VENV)/bin/wb results $(DEMO_RUN) memorization --plot $(DEMO_RUN)-memorization.html
	@echo
	@echo "Browse the run:  make dashboard   (or: $(VENV)/bin/wb dashboard $(DEMO_RUN)), then open http://127.0.0.1:8501"

dashboard: $(STAMP)
	$(VENV)/bin/wb dashboard $(DEMO_RUN)

bench: $(STAMP)
	$(PY) benchmarks/store.py

clean:
	rm -rf $(VENV) build *.egg-info
