# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both install what they need first (idempotent); VENV=... selects another environment.

VENV ?= .venv
PYTHON ?= python3
VENV_FLAGS ?=
PY := $(abspath $(VENV))/bin/python
TORCH_PINS := torch==2.15.0 torchvision==0.29.2
STAMP := $(VENV)/.distill-installed
PYTEST_ARGS ?=
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test lint format teachers bench clean-cache

install: $(STAMP)

$(STAMP): setup.py pyproject.toml Makefile tools/install_detectron2.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import sys, detectron2._C as C; sys.exit(getattr(C, 'IS_STANDIN', False))" \
		2>/dev/null; then echo "compiled detectron2 found: keeping its torch"; \
	else $(PY) -m pip install -q $(TORCH_PINS); fi
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: install
	$(PY) tools/demo.py

teachers: install
	$(PY) tools/train_teachers.py $(if $(FAMILIES),--families $(FAMILIES))

test: install lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: install
	$(PY) tools/benchmark.py --config-file configs/embedded/faster_rcnn_R18_feature_kd.yaml \
		--json output/benchmark/faster_rcnn_R18_feature_kd.json
