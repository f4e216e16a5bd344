# VGG classroom: `make run` serves the app, `make test` runs every test.
#
# Everything is installed into .venv inside the repository with pip. A stamp file per
# requirements file records the last successful install, so a second `make run` only
# reinstalls when requirements.txt changed (make compares the files' times).
#
# Settings (on the command line, `make run PORT=8600`, or in the environment):
#   PORT (8501), ADDRESS (localhost; 0.0.0.0 serves a whole class), PYTHON (python3),
#   PIP_ARGS (extra pip options, e.g. a CPU-only torch index), PYTEST_ARGS,
#   CHROMIUM (/usr/bin/chromium, the browser the end-to-end tests drive).

PYTHON      ?= python3
VENV        ?= .venv
PORT        ?= 8501
ADDRESS     ?= localhost
PIP_ARGS    ?=
PYTEST_ARGS ?=
CHROMIUM    ?= /usr/bin/chromium

VENV_PYTHON := $(VENV)/bin/python
RUN_STAMP   := $(VENV)/.requirements.stamp
DEV_STAMP   := $(VENV)/.requirements-dev.stamp
# root runs apt-get itself; anyone else through sudo where there is one
SUDO        := $(shell [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null 2>&1 || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help run test bench venv dev-venv chromium clean distclean

help:
	@echo "make run      serve the app at http://$(ADDRESS):$(PORT) (PORT=..., ADDRESS=0.0.0.0 for a class)"
	@echo "make test     install the test tools and Chromium if missing, run the whole test suite"
	@echo "make bench    training throughput of this engine against the notebook's loop"
	@echo "make clean    remove caches and test artefacts (keeps .venv, data and runs)"
	@echo "make distclean  also remove .venv"

# vgg.speedups.allocator starts the server with glibc's malloc tuned for training (see vgg/speedups/allocator.py).
run: $(RUN_STAMP)
	$(VENV_PYTHON) -m vgg.speedups.allocator -m streamlit run app.py --server.port $(PORT) --server.address $(ADDRESS)

test: $(DEV_STAMP) chromium
	CHROMIUM=$(CHROMIUM) $(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

bench: $(RUN_STAMP)
	$(VENV_PYTHON) bench/throughput.py

venv: $(RUN_STAMP)

dev-venv: $(DEV_STAMP)

# The virtual environment itself; order-only below, since pip changes its files' times.
$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "could not create $(VENV) with $(PYTHON) -m venv; on Debian/Ubuntu: apt-get install python3-venv" >&2; \
	  exit 1; }

$(RUN_STAMP): requirements.txt | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install $(PIP_ARGS) -r requirements.txt
	@touch $@

# Installs both files in one resolve; that also brings the run requirements up to date.
$(DEV_STAMP): requirements.txt requirements-dev.txt | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install $(PIP_ARGS) -r requirements.txt -r requirements-dev.txt
	@touch $(RUN_STAMP) $@

# Debian's Chromium for the browser tests; Python playwright drives it (never a browser download).
chromium:
	@if [ -x "$(CHROMIUM)" ]; then \
	  echo "browser for the end-to-end tests: $(CHROMIUM)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "$(CHROMIUM) is missing and apt-get is not available: install Chromium, then run make test CHROMIUM=/path/to/chromium" >&2; \
	  exit 1; \
	else \
	  echo "installing chromium with apt-get"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	  || { $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update \
	       && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; \
	fi

clean:
	rm -rf tests/artifacts .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
