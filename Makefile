# The two commands of the README: `make demo` (run the system) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SAGA   := $(BIN)/saga
N      ?= 2000

.PHONY: setup tools broker demo up test unit lint mutate chaos chaos-test bench stop clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Debian's Chromium (the test that loads the saga page in a real browser) and
# docker-compose (validates docker-compose.yml; no Docker engine needed), installed;
# Debian's Prometheus (the metrics test scrapes the workers with it) only unpacked into
# PROMETHEUS_DIR, no service installed: `apt-get download` needs no root, only package
# lists (fetched through sudo when there are none).
# apt-get needs root: other users go through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
PROMETHEUS_DIR ?= .local/prometheus
tools:
	@command -v chromium >/dev/null && command -v docker-compose >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium docker-compose >/dev/null; }
	@test -x $(PROMETHEUS_DIR)/usr/bin/prometheus || { \
	  mkdir -p $(PROMETHEUS_DIR) && cd $(PROMETHEUS_DIR) && \
	  { apt-get download -qq prometheus 2>/dev/null || \
	    { $(SUDO) apt-get update -qq && apt-get download -qq prometheus; }; } && \
	  dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb && \
	  test -x usr/bin/prometheus; }

# Local Kafka (fetched from Maven Central once) and the topics of topics.yaml.
broker: setup
	$(SAGA) kafka start
	$(SAGA) topics apply

# First command: set up everything, run the four workers, place three sample orders.
demo: broker
	$(SAGA) up --demo

# Run the system and keep it running (Ctrl-C stops every worker).
up: broker
	$(SAGA) up

# Second command: set up everything and run the whole test suite against a real broker.
test: broker tools
	$(BIN)/pytest -n 2 --dist loadgroup

unit: setup
	$(BIN)/pytest tests/unit tests/component

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# Mutation testing of the guarantee modules against tests/unit and tests/component
# ([tool.mutmut] in pyproject.toml); no broker. Of messaging/faust_app.py only the
# write-after-send and the commit hook, and of messaging/faust_workarounds.py the flush
# the commit hook runs in, the clean-stop check and the crash marker: the rest is Faust
# wiring that only a broker exercises. A fresh run each time, so no result is left from
# older code.
MUTANTS := 'participants.*' 'orchestrator.engine.machine.*' 'messaging.tables.*' \
	'messaging.producer.*' 'messaging.faust_app.xǁWriteAfterSendǁ*' \
	'messaging.faust_app.x_flush_before_commit*' \
	'messaging.faust_workarounds.x_extend_producer_flush*' \
	'messaging.faust_workarounds.x_discard_tables_after_crash*' \
	'messaging.faust_workarounds.x_mark_clean_shutdown*' \
	'messaging.faust_workarounds.x_brokers_of*' \
	'messaging.faust_workarounds.x_unclean_stop*'
mutate: setup
	rm -rf mutants && mkdir mutants
	@echo "mutmut run: about 10 minutes, log in mutants/run.log"
	$(BIN)/mutmut run $(MUTANTS) >mutants/run.log 2>&1 || { tail -n 40 mutants/run.log; exit 1; }
	$(BIN)/python dev/mutation_report.py

chaos: broker
	$(SAGA) chaos --orders $(N)

# Only the reduced chaos, SIGTERM, scale-out/in and broker-kill tests (also in `make test`).
chaos-test: broker
	$(BIN)/pytest -m chaos

bench: broker
	$(SAGA) bench

stop:
	-$(SAGA) kafka stop

clean: stop
	rm -rf .local $(VENV)
