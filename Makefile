# orchestra: `make demo` sets everything up and runs the demo; `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test chaos lint stop services browser install bench

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(BIN)/.installed

services:
	bash scripts/services.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

browser:
	bash scripts/browser.sh

test: install services browser lint
	env -u DJANGO_SETTINGS_MODULE $(BIN)/pytest

# The whole fault-injection suite (tests/chaos) against a RabbitMQ node and a PostgreSQL cluster
# of its own, which it restarts; its short variant runs in `make test` on the shared services.
chaos: install services
	eval "$$(bash scripts/chaos_services.sh start)" && \
	  env -u DJANGO_SETTINGS_MODULE CHAOS_FULL=1 $(BIN)/pytest tests/chaos -s; \
	  status=$$?; bash scripts/chaos_services.sh stop; exit $$status

demo: install services
	bash scripts/demo.sh

stop:
	bash scripts/demo.sh stop

# The benchmarks' own environment: orchestra's requirements plus the peers and matplotlib.
BENCH_BIN := .venv-bench/bin
$(BENCH_BIN)/.installed: requirements.txt bench/requirements.txt pyproject.toml
	test -x $(BENCH_BIN)/python || $(PYTHON) -m venv .venv-bench
	$(BENCH_BIN)/pip install -q --upgrade pip
	$(BENCH_BIN)/pip install -q -r bench/requirements.txt
	$(BENCH_BIN)/pip install -q --no-deps -e .
	touch $@

# Every benchmark, with its plot in bench/plots/ (figures: bench/README.md). A developer's .env
# (the demo's: DEBUG, quick sweeps) must not change the figures.
bench: export ORCHESTRA_ENV_FILE := /dev/null
bench: $(BENCH_BIN)/.installed services
	mkdir -p bench/plots
	$(BENCH_BIN)/python bench/throughput.py --plot bench/plots/throughput.png
	$(BENCH_BIN)/python bench/queue.py --plot bench/plots/queue.png
	$(BENCH_BIN)/python bench/urgent.py --plot bench/plots/urgent.png
	$(BENCH_BIN)/python bench/memory.py --plot bench/plots/memory.png
	$(BENCH_BIN)/python bench/api_latency.py --plot bench/plots/api_latency.png
	$(BENCH_BIN)/python bench/plugins.py --plot bench/plots/plugins.png
