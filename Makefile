# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install first.
#
#   make install        the package and its core dependencies (enough for `make demo`)
#   make install-dev    + every extra (tests, ONNX export, Lightning, Hugging Face, TensorBoard, MLflow,
#                       the Planetoid converter, the docs site) and `build`
#   make demo           find tickets on MNIST-1D and write the report (needs only `install`)
#   make test           the fast tier: pytest -m "not slow"
#   make test-all       the second tier: pytest -m slow
#   make docs           the documentation site, built strictly into site/
#   make check-install  build the wheel, install it into a clean venv, run it from outside the repository
#   make lock           regenerate constraints.txt from a fresh install of everything
#   make clean          remove .venv, runs/ and site/
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every install takes torch 2.13.0 first. On this project's machines pip finds torch 2.13.0's CPU build on
# local disk. Elsewhere PyPI's Linux wheel of torch 2.13.0 is the CUDA build (several GB with its nvidia-*
# libraries); the CPU-only build comes from PyTorch's CPU index instead: see docs/install.md.
TORCH := torch==2.13.0
# The lock: every package of the full dev environment at one version, so two fresh installs get the same
# versions. `-c` holds each pip install to it; PIP_CONSTRAINT carries the same pins into the isolated build
# environment (setuptools) that pip and `python -m build` create to build lottery itself.
LOCK := constraints.txt
PIP = PIP_CONSTRAINT=$(abspath $(LOCK)) $(BIN)/pip install -q -c $(LOCK)
EXTRAS := test,export,lightning,huggingface,tensorboard,mlflow,planetoid,docs
DATA ?= $(if $(wildcard ../shared/data/mnist),../shared/data,)
# Stamps live inside the venv: a new venv starts without them, and a second `make test` installs nothing.
CORE_STAMP := $(VENV)/.lottery-install.stamp
DEV_STAMP := $(VENV)/.lottery-install-dev.stamp

.PHONY: install install-dev demo test test-all docs check-install lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(CORE_STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e .
	touch $@

$(DEV_STAMP): $(CORE_STAMP)
	$(PIP) -e '.[$(EXTRAS)]' build
	touch $@

install: $(CORE_STAMP)

install-dev: $(DEV_STAMP)

demo: install
	$(BIN)/lottery find mnist1d-mlp --out runs --report

# The fast tier on every core (pytest-xdist), a file per worker so that its module fixtures are made once, and
# one thread per worker so that the workers do not fight over the cores. The tests that must hold on several
# threads set them themselves (conftest.torch_threads); the second tier runs on the default threads.
TEST_WORKERS ?= auto
test: install-dev
	OMP_NUM_THREADS=1 LOTTERY_TEST_DATA=$(abspath $(DATA)) $(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile

# pytest exits 5 when it collects no test: a second tier with nothing marked slow yet is not a failure.
test-all: install-dev
	LOTTERY_TEST_DATA=$(abspath $(DATA)) $(BIN)/python -m pytest -m slow; \
	status=$$?; if [ $$status -eq 5 ]; then echo "test-all: no test is marked slow"; exit 0; fi; exit $$status

docs: install-dev
	$(BIN)/mkdocs build --strict -d site

# The wheel as a user gets it: built, installed with torch into a clean venv in a temporary folder, and run
# from outside the repository, so nothing is imported from src/.
check-install: install-dev
	@set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "check-install: building the wheel"; \
	PIP_CONSTRAINT=$(abspath $(LOCK)) $(BIN)/python -m build --wheel --outdir "$$tmp/dist" . >"$$tmp/build.log" 2>&1 \
	    || { cat "$$tmp/build.log"; exit 1; }; \
	echo "check-install: installing $$(cd "$$tmp/dist" && ls lottery-*.whl) into a clean venv"; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q -c $(abspath $(LOCK)) $(TORCH); \
	"$$tmp/venv/bin/pip" install -q -c $(abspath $(LOCK)) "$$tmp"/dist/lottery-*.whl; \
	cd "$$tmp"; \
	version=$$(venv/bin/python -c "import lottery, sys; print(lottery.__version__)"); \
	venv/bin/python -c "import lottery, pathlib, sys; here = pathlib.Path(lottery.__file__).resolve().parent; \
	    sys.exit(0 if here.is_relative_to(pathlib.Path('venv').resolve()) and (here / 'py.typed').is_file() \
	             else f'check-install: {here} is not the installed package or has no py.typed')"; \
	venv/bin/lottery --version | grep -F -q "$$version" \
	    || { echo "check-install: lottery --version does not say $$version"; exit 1; }; \
	venv/bin/lottery presets >/dev/null; \
	echo "check-install: OK: lottery $$version installs from its wheel into a clean venv; import, py.typed, --version and presets work"

# A fresh venv, the newest releases that fit pyproject.toml (no -c: this is where the pins come from), then
# pip freeze. torch is written without its local label (+cpu here), which any build of 2.13.0 satisfies.
lock:
	@set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q $(TORCH); \
	"$$tmp/venv/bin/pip" install -q '.[$(EXTRAS)]' build setuptools; \
	{ echo "# The lock: every package of lottery's full dev environment (core, every extra, build tools), one"; \
	  echo "# version each, for Python $$("$$tmp/venv/bin/python" -c 'import sys; print(*sys.version_info[:2], sep=".")') on Linux x86_64. Every pip install in the Makefile uses -c $(LOCK)."; \
	  echo "# Regenerate with \`make lock\` (a fresh venv, pip install torch==2.13.0 and .[$(EXTRAS)],"; \
	  echo "# build and setuptools without constraints, then pip freeze less lottery and pip); review the diff."; \
	  "$$tmp/venv/bin/pip" freeze --all --exclude lottery --exclude pip | sed -E 's/^torch==.*/torch==2.13.0/'; \
	} > "$$tmp/$(LOCK)"; \
	mv "$$tmp/$(LOCK)" $(LOCK); echo "lock: wrote $(LOCK) ($$(grep -vc '^#' $(LOCK)) packages)"

clean:
	rm -rf $(VENV) runs site
