# One entry point for people and CI. `make test` works from a clean clone: it makes the
# virtual environment, installs the pinned dependencies, then runs every check.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed

.PHONY: test demo bench browser lint typecheck unit integration lock clean

# Everything: lint, types, the unit tier (random order), the integration tier.
test: lint typecheck unit integration

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Azurite (the Azure Storage emulator) comes from npm into the repo; tests start it.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# checkov (template checks) lives in its own venv: its pins are not the app's.
$(TOOLS_STAMP): requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check -r requirements-tools.txt
	touch $(TOOLS_STAMP)

# Debian's chromium for the report's browser test (playwright drives it; no download).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# The fast tier, for every change: pure logic and plain values, in random order.
unit: $(STAMP)
	$(BIN)/pytest -m "not integration"

# Azurite, the local Azure, checkov/pycep, the browser, the demo: in file order.
integration: $(STAMP) $(NODE_STAMP) $(TOOLS_STAMP) browser
	$(BIN)/pytest -m integration -p no:randomly

# The whole job on an embedded local Azure (control plane + Azurite): 32 s measured warm
# (`time make demo`, 2 cores, 2026-12-04), plus the installs from a clean clone.
demo: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m demo

# The app against Cloud Custodian and the baseline, its CPU per machine, event latency,
# cost: writes BENCHMARKS.md and bench/results.json (about 40 minutes). The app's 100k
# night is measured apart (`python bench/run.py --only-large`) and kept.
bench: $(STAMP) $(NODE_STAMP)
	$(BIN)/python bench/run.py

# Refresh the transitive pins after changing requirements*.txt.
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(pytest|hypothesis|ruff|mypy|trustme|playwright)==' \
	  | sed '1i # Transitive pins, from pip freeze of requirements-dev.txt; refresh with `make lock`.' > constraints.txt

# Mutation testing (mutmut) of the core -- policy, classify, facts, events, config, scope -- and
# of the act step, against their
# unit tests; fails when a file has under 90% of its mutants killed (about 15 minutes).
.PHONY: mutation
mutation: $(STAMP)
	$(BIN)/python tools/mutation.py

clean:
	rm -rf $(VENV) $(TOOLS) .venv-bench node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
