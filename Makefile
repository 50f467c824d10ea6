# Two commands are the contract: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,local-embed]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stalwart demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests examples bench
	$(BIN)/ruff check --fix src tests examples bench

bench: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/step_overhead.py
	PYTHONPATH=. $(BIN)/python bench/throughput.py
	PYTHONPATH=. $(BIN)/python bench/recovery.py
	PYTHONPATH=. $(BIN)/python bench/recovery.py --backend sqlite
	PYTHONPATH=. $(BIN)/python bench/wakeup.py
	$(BIN)/python bench/worker_memory.py
	PYTHONPATH=. $(BIN)/python bench/gateway_overhead.py
	PYTHONPATH=. $(BIN)/python bench/agent_turn.py
	PYTHONPATH=. $(BIN)/python bench/api_load.py
	PYTHONPATH=. $(BIN)/python bench/observability_overhead.py
	PYTHONPATH=. $(BIN)/python bench/recall.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
