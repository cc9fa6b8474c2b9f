# Both entry points create (or reuse) .venv and install exactly requirements.lock, dsclab and the
# example plugin (examples/dsclab-example-plugin: a data family and a study kind through entry points).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PLUGIN := examples/dsclab-example-plugin
# GPU=1: torch's CUDA build of the same version (requirements-gpu.lock, every other pin the same),
# from GPU_INDEX with pip --isolated (a local wheel folder in pip's configuration may hold the
# torch+cpu wheel, which would stand in for it); the choice is remembered in .venv/.gpu.
GPU_INDEX ?= https://pypi.org/simple
GPU    ?= $(if $(wildcard $(VENV)/.gpu),1,0)
ifeq ($(GPU),1)
LOCK   := requirements-gpu.lock
LOCK_PIP := --isolated --index-url $(GPU_INDEX)
else
LOCK   := requirements.lock
LOCK_PIP :=
endif
STAMP  := $(VENV)/.installed-$(GPU)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PYTHONUNBUFFERED := 1

.PHONY: demo test venv lock lock-gpu clean gpu-check

venv: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml $(PLUGIN)/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(LOCK_PIP) --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e $(PLUGIN)
	@if [ "$(GPU)" = 1 ]; then touch $(VENV)/.gpu; \
	  $(BIN)/python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'GPU=1: torch ' + torch.__version__ + ' is not a CUDA build')"; \
	else rm -f $(VENV)/.gpu; fi
	@rm -f $(VENV)/.installed*
	@touch $@

demo: $(STAMP)
	$(BIN)/dsclab run studies/quick.yaml

# four processes, each module whole on one of them, the longest first (tests/conftest.py)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 4 --dist loadfile --no-loadscope-reorder

# The device check on a machine with one GPU (at most 8 minutes): its JSON record and logs go to OUT.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(or $(OUT),results/gpu-check)

# Re-resolve the environment from pyproject.toml into requirements.lock (needs the registry).
lock:
	rm -rf /tmp/dsclab-lock && $(PYTHON) -m venv /tmp/dsclab-lock
	/tmp/dsclab-lock/bin/pip install --quiet -e '.[test]' 'setuptools>=68' wheel
	{ head -n 2 requirements.lock; /tmp/dsclab-lock/bin/pip freeze --all --exclude-editable | grep -v -E '^(pip|dsclab)=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

# Re-resolve requirements-gpu.lock from requirements.lock with torch's CUDA build from GPU_INDEX (needs the
# registry; pip reads each wheel's metadata, downloading the wheels where the index does not serve it apart).
lock-gpu:
	grep -v '^#' requirements.lock | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > /tmp/dsclab-gpu.in
	$(PYTHON) -m pip --isolated install --quiet --dry-run --ignore-installed --index-url $(GPU_INDEX) \
	    --report /tmp/dsclab-gpu.json -r /tmp/dsclab-gpu.in
	{ head -n 3 requirements-gpu.lock; $(PYTHON) -c "import json; r = json.load(open('/tmp/dsclab-gpu.json')); \
	    print('\n'.join(sorted((p['metadata']['name'] + '==' + p['metadata']['version'] for p in r['install']), \
	    key=str.lower)))"; } > requirements-gpu.lock.new
	mv requirements-gpu.lock.new requirements-gpu.lock

clean:
	rm -rf $(VENV) results
