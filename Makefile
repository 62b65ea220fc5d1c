# Every target does its own set-up: a fresh machine needs nothing but python3.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-unit lint biomed clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[demo,dev,retrieval]"
	touch $(STAMP)

demo: $(STAMP)  ## the whole path on Python's own documentation, CPU, minutes
	$(VENV)/bin/domainlm run recipes/demo.yaml

test: $(STAMP)  ## lint + unit tests + end-to-end tests on tiny data
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not shared_data"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

biomed: $(STAMP)  ## the real-domain recipe (needs ../shared/data)
	$(VENV)/bin/domainlm run recipes/biomed-small.yaml

clean:
	rm -rf runs
