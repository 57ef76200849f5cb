# Everything a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DATA ?= demo-data
DEMO_TRIALS ?= 12
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

demo: venv
	@if [ -d $(DEMO_DATA) ]; then echo "$(DEMO_DATA)/ exists: reusing it"; else $(BIN)/maskopt make-demo-data $(DEMO_DATA); fi
	$(BIN)/maskopt search --space spaces/demo.yaml --data $(DEMO_DATA) --trials $(DEMO_TRIALS)
	$(BIN)/maskopt score exports/demo/submission.csv $(DEMO_DATA)/eval/solution.csv

postgres:
	scripts/start-postgres

chromium:
	scripts/install-chromium

test-data:
	scripts/install-test-data

test: venv-test postgres chromium test-data
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) exports maskopt.db maskopt-artifacts .maskopt-cache
