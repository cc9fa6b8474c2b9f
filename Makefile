# Both entry points create (or reuse) .venv and install exactly requirements.lock, dsclab and the
# example plugin (examples/dsclab-example-plugin: a data family and a study kind through entry points).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PLUGIN := examples/dsclab-example-plugin
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PYTHONUNBUFFERED := 1

.PHONY: demo test venv lock clean gpu-check

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml $(PLUGIN)/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e $(PLUGIN)
	@touch $@

demo: $(STAMP)
	$(BIN)/dsclab run studies/quick.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The device check on a machine with one GPU (at most 8 minutes): its JSON record and logs go to OUT.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(or $(OUT),results/gpu-check)

# Re-resolve the environment from pyproject.toml into requirements.lock (needs the registry).
lock:
	rm -rf /tmp/dsclab-lock && $(PYTHON) -m venv /tmp/dsclab-lock
	/tmp/dsclab-lock/bin/pip install --quiet -e '.[test]' 'setuptools>=68' wheel
	{ head -n 2 requirements.lock; /tmp/dsclab-lock/bin/pip freeze --all --exclude-editable | grep -v -E '^(pip|dsclab)=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) results
