# `make demo` and `make test` set everything up themselves on a fresh machine (python3 with venv and pip).
# The virtual environment lives in $(VENV) (default .venv); torch's CPU wheel is installed before anything that
# depends on torch, otherwise pip would resolve a multi-GB CUDA build.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,deepspeed
PYTEST_ARGS ?= -n 2

.PHONY: install demo test quality style

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

$(VENV)/.installed-$(EXTRAS): $(PYTHON) setup.cfg pyproject.toml
	$(PYTHON) -m pip install --quiet "$(TORCH_SPEC)"
	$(PYTHON) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: install
	$(VENV)/bin/trl-diffusion demo --output-dir demo_output

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS)

quality: EXTRAS = all
quality: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

style: EXTRAS = all
style: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
