PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint docs clean

# Install once, again only when the dependency pins change.
$(STAMP): pyproject.toml requirements-ci.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-ci.txt -e '.[dev,docs,export,pretrained,train]'
	touch $(STAMP)

# The main job: train the digits classifier from scratch (about a minute on 2 CPU cores).
demo: $(STAMP)
	rm -rf runs/digits-demo
	$(BIN)/encoderkit train --task digits --out runs/digits-demo
	$(BIN)/encoderkit attention --checkpoint runs/digits-demo --example 0 \
		--out runs/digits-demo/attention.png

test: $(STAMP) lint docs
	bash scripts/install-browser.sh  # Debian's chromium, for the HTML viewer's browser test
	$(BIN)/python -m pytest -q

# encoderkit against torch and Hugging Face on this machine (about 2 minutes on 2 CPU cores);
# ARGS are passed on, e.g. make bench ARGS=--all
bench: $(STAMP)
	$(BIN)/encoderkit bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/ruff format --check src tests benchmarks examples scripts
	$(BIN)/mypy src

# The API reference, from the docstrings, into site/ (a few seconds, no network); strict: a broken
# reference or a docstring mkdocstrings cannot read fails the build.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict  # not --quiet: it hides warnings from strict mode too

clean:
	rm -rf $(VENV) site .pytest_cache .ruff_cache .mypy_cache .hypothesis
