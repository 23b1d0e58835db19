# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0   # a CPU wheel on local disk; an unpinned torch would pull a multi-GB CUDA build
DATA ?= $(if $(wildcard ../shared/data/mnist),../shared/data,)

.PHONY: install demo test clean

$(BIN)/lottery: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,export,lightning,huggingface]'
	touch $(BIN)/lottery

install: $(BIN)/lottery

demo: install
	$(BIN)/lottery find mnist1d-mlp --out runs --report

test: install
	LOTTERY_TEST_DATA=$(abspath $(DATA)) $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
