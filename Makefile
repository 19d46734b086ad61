# Two commands for a fresh machine: `make demo` and `make test` (README).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The bundled demo fields (demo/README.md); point DEMO_DIR at any folder of fields or a video.
DEMO_DIR ?= demo/fields
DEMO_FRAMES ?= 40
DEMO_DB ?= runs/demo/capture.db
DEMO_REPORT ?= runs/demo/report.html

.PHONY: setup setup-edge browser demo test lint typecheck train-all export bench pi-check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Strict editable install: the package edge_bloodcls is a tree of links to the source folders
# in build/, so imports resolve exactly as installed and IDEs and type checkers can follow them
# (rerun `make setup` after adding a module). PYTHONWARNINGS silences setuptools' notice that it
# made such a tree; it is not a problem, and `make` should print none.
EDITABLE = PYTHONWARNINGS=ignore $(BIN)/pip install -q --config-settings editable_mode=strict -e

# The edge runtime alone: what a Raspberry Pi installs (no TensorFlow).
setup-edge: $(BIN)/python
	$(EDITABLE) ".[edge]"

# Everything: training, conversion, benchmarks, tests.
setup: $(BIN)/python
	$(EDITABLE) ".[edge,train,dev,fhir]"

demo: setup-edge
	@if [ -d "$(DEMO_DIR)" ]; then \
	  mkdir -p $(dir $(DEMO_DB)); \
	  $(BIN)/edge-bloodcls capture --camera "$(DEMO_DIR)" --mode field --no-preview \
	    --max-frames $(DEMO_FRAMES) --db $(DEMO_DB) --sample demo && \
	  $(BIN)/edge-bloodcls report $(DEMO_DB) --out $(DEMO_REPORT) && \
	  echo "open $(DEMO_REPORT) in a browser; check and sign the flagged cells: $(BIN)/edge-bloodcls review $(DEMO_DB)"; \
	else \
	  echo "No images at DEMO_DIR=$(DEMO_DIR): point it at a folder of microscope fields or a video,"; \
	  echo "or use a camera: $(BIN)/edge-bloodcls capture --camera 0 --mode field"; \
	  exit 1; \
	fi

# Headless Chromium and its driver for the browser tests of the report and review pages, from the
# system's packages (Selenium is told both paths and downloads nothing), and poppler-utils
# (pdftotext, pdftoppm) for the tests of `report --format pdf`. Idempotent: apt-get runs only when
# one is missing; where none can be installed the browser and PDF tests skip and say why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -x /usr/bin/pdftotext ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "browser: no apt-get here; install Chromium and chromedriver to run the browser tests"; exit 0; fi; \
	SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver poppler-utils \
	  >/dev/null) || echo "browser: could not install chromium chromium-driver poppler-utils; the browser tests will be skipped"

# Lint, type check, then the suite: all three must pass.
test: setup browser lint typecheck
	$(BIN)/python -m pytest -q

# ruff over the source tree (rules and format in pyproject.toml; `ruff format .` fixes the
# format), then the import contracts of .importlinter (the rooms of edge_runtime, no TensorFlow
# there, no cycles), checked on the installed package from outside the checkout, as mypy is.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd /tmp && $(CURDIR)/$(BIN)/lint-imports --no-logo --cache-dir $(CURDIR)/.import_linter_cache $(CURDIR)/.importlinter

# mypy on the whole package (the runtime, train, convert, benchmarks, the CLI), as installed:
# run from outside the checkout so that it reads the package, not the source folders.
typecheck: setup
	cd /tmp && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/.mypy_cache -p edge_bloodcls

# The real training runs (hours on a CPU; resumable): see README "Training".
train-all: setup
	CLI=$(BIN)/edge-bloodcls scripts/train_all.sh

# Every export format of the trained MobileNetV2, the summary, and the shipped bundles.
export: setup
	CLI=$(BIN)/edge-bloodcls PY=$(BIN)/python scripts/export_all.sh runs/mobilenetv2_160_ft

# The full benchmark run behind benchmarks/results/REPORT.md (resumable; REDO_LATENCY=1 re-times).
bench: setup
	scripts/bench_all.sh

# The edge install and the bundled model on arm64 Debian under qemu, compared with a native run
# (minutes; needs root and the package registries). Log: benchmarks/results/pi_check_*.log.
pi-check:
	scripts/pi_check.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
