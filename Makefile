# make run  : execute every notebook in order, in place, in a fresh kernel (regenerates figures/)
# make test : unit tests, then every notebook in quick mode under nbval
# make lab  : JupyterLab on notebooks/
# make lint : ruff format --check and ruff check (settings in pyproject.toml)
# make book : the series as a static website in _build/html/ (from the committed notebooks; nothing re-runs)
# Each target creates .venv on first use and re-installs only when pyproject.toml or constraints.txt change.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test unit notebooks lint lab book clean-venv

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,docs]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/run_notebooks.py notebooks

test: unit notebooks

unit: $(STAMP)
	$(BIN)/python -m pytest tests

# nbval compares the outputs of cells marked NBVAL_CHECK_OUTPUT with the committed (make run) outputs.
notebooks: $(STAMP)
	@if ls notebooks/[0-9][0-9]_*.ipynb >/dev/null 2>&1; then \
	  VAELIB_QUICK=1 MPLBACKEND=agg $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider \
	    -o filterwarnings= -o testpaths= notebooks/[0-9][0-9]_*.ipynb; \
	else echo "no notebooks to test yet"; fi

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

# Sphinx + MyST-NB, warnings are errors (docs/build.py stages the sources into _build/src/ first).
book: $(STAMP)
	$(BIN)/python docs/build.py

clean-venv:
	rm -rf $(VENV)
