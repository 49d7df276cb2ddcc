# `make demo` and `make test` each set up .venv when missing, then run. Nothing else is needed on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SHARED ?= $(abspath ../shared)

# Point harden at the shared data and zoo when they sit beside the checkout; an explicit environment wins.
ifneq ($(wildcard $(SHARED)/zoo),)
export HARDEN_ZOO ?= $(SHARED)/zoo
endif
ifneq ($(wildcard $(SHARED)/data),)
export HARDEN_DATA ?= $(SHARED)/data
endif

.PHONY: setup setup-browser demo test redteam-train clean

setup: $(STAMP)

# torch first, pinned, so pip takes the local wheels rather than resolving a multi-GB CUDA build from the index.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[cpu,dev]" 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import harden.cli, onnxruntime, torch_pruning, mlflow" && touch $(STAMP)

# Debian's chromium for the report.html browser test (needs root, as CI has; elsewhere the test skips with a reason).
setup-browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@chromium --version

demo: $(STAMP)
	@if [ ! -d "$${HARDEN_ZOO:-}/preact18-badnets" ]; then \
	  echo "No model zoo found (looked for \$$HARDEN_ZOO/preact18-badnets; HARDEN_ZOO='$${HARDEN_ZOO:-}')."; \
	  echo "Point the demo at your own model and data, for example:"; \
	  echo "  $(BIN)/harden run pipelines/demo.yaml --set model.path=/path/to/model_folder \\"; \
	  echo "      --set data.clean.path=/path/to/clean.npz --set data.test.path=/path/to/test.npz"; \
	  echo "(a model folder holds config.json in the timm hub layout beside model.safetensors)"; \
	  exit 1; fi
	@# the demo model's trigger is known (it is the shared zoo's BadNets model): name it, so its ASR is measured
	$(BIN)/harden run pipelines/demo.yaml --out runs/demo \
	  --set 'stages.verify.triggers.badnets={kind: patch, target: 0, size: 3, value: 1.0, position: bottom-right, margin: 1}'

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# The red-team benchmark's models, in the background (resumable; log beside the models). Start it first in a session
# whenever `python benchmarks/redteam.py status` shows missing models.
REDTEAM ?= $(or $(HARDEN_REDTEAM),$(HOME)/.cache/harden/redteam)
redteam-train: $(STAMP)
	@mkdir -p $(REDTEAM)
	nohup $(BIN)/python benchmarks/redteam.py train --jobs 2 --threads 1 >> $(REDTEAM)/train.log 2>&1 &
	@echo "training in the background; follow $(REDTEAM)/train.log"

clean:
	rm -rf runs harden-runs .pytest_cache
