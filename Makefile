# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JVM_ARCHIVE := $(VENV)/lakehouse-spark.jsa
SQLITE_JDBC ?= /usr/share/java/sqlite-jdbc.jar
PYTEST_ARGS ?=

.PHONY: setup check-java check-jdbc test test-slow test-unit test-faults bench run up down status clean help
.PHONY: check-monitoring-tools check-browser test-ui

help:
	@echo "make run    - start the embedded stack, producers and Airflow (foreground; Ctrl-C stops all)"
	@echo "make test   - install everything and run the test suite (all but the slow scenarios)"
	@echo "make test-slow - the slowest scenarios (Airflow end to end, deadline alerts, the two-writer race, the Gold kill, replays through every layer, catalog contention, a broker restart, compaction under every layer); CI runs both"
	@echo "make test-unit - only the unit tier: no broker, no Spark, no other service (under a minute)"
	@echo "make test-deploy - docker-compose.yaml: Compose schema, compose-lint and security policies (no Docker needed)"
	@echo "make test-spark-cluster - Bronze, Silver and Gold on a real Spark standalone master and worker (PostgreSQL catalog)"
	@echo "make test-ui - the Lakehouse page in a browser (part of the slow run-all scenario; saves a screenshot)"
	@echo "make test-faults - only the fault tier (kills, restarts, races, outages): the README's fault table"
	@echo "make bench  - run the benchmarks (BENCH lines), including each layer's per-run cost breakdown"
	@echo "make bench-sustained - the whole orchestrated pipeline at RATE=2000 trades/s for MINUTES=15"
	@echo "make setup  - only install (virtualenv, Python packages, JDBC driver check, promtool/amtool)"

setup: $(STAMP) check-java check-jdbc check-monitoring-tools check-browser $(JVM_ARCHIVE)

# The Spark driver's class-data-sharing archive (see include/lakehouse/jvm_archive.py): every layer
# run maps the classes it loads from it instead of reading them from jars. Rebuilt when the
# virtualenv changes; without it the jobs run as before, only with a slower start.
$(JVM_ARCHIVE): $(STAMP) | check-java check-jdbc
	@$(VENV)/bin/lakehouse jvm-archive || echo "warning: JVM archive not built; Spark jobs start slower"

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required: install python3.11 (and python3.11-venv)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

check-java:
	@command -v java >/dev/null || { echo "Java 17 is required: apt-get install openjdk-17-jre-headless"; exit 1; }
	@java -version 2>&1 | grep -qE 'version "(17|21)' || { echo "Java 17 is required (found: $$(java -version 2>&1 | head -1))"; exit 1; }

POSTGRES_JDBC ?= /usr/share/java/postgresql.jar
JDBC_PACKAGES := libxerial-sqlite-jdbc-java libpostgresql-jdbc-java

# The SQLite driver is required (embedded catalog); the PostgreSQL one serves the production path
# and its tests, which skip without it. Installed from Debian's packages when running as root.
check-jdbc:
	@if [ ! -f $(SQLITE_JDBC) ] || [ ! -f $(POSTGRES_JDBC) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing JDBC drivers ($(JDBC_PACKAGES))"; \
	    apt-get install -y -qq $(JDBC_PACKAGES) >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $(JDBC_PACKAGES) >/dev/null 2>&1; } || true; \
	  fi; \
	fi
	@test -f $(SQLITE_JDBC) || { echo "SQLite JDBC driver missing: apt-get install libxerial-sqlite-jdbc-java"; exit 1; }

MONITORING_PACKAGES := prometheus prometheus-alertmanager
POLICY_RC_D ?= /usr/sbin/policy-rc.d

# promtool and amtool check the Prometheus and Alertmanager files under monitoring/ (tests/monitoring,
# which skip without them). Installed from Debian's packages when running as root, never fatal.
# Without recommends: the node exporter they pull in would listen on 9100. A policy-rc.d that
# refuses every start is put in place for the install (unless one exists, as in containers) so the
# packages' init scripts leave no prometheus (9090) or alertmanager (9093) daemon behind.
check-monitoring-tools:
	@if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Prometheus tools ($(MONITORING_PACKAGES))"; \
	    policy=$(POLICY_RC_D); own_policy=; \
	    if [ ! -e $$policy ]; then \
	      printf '#!/bin/sh\nexit 101\n' > $$policy && chmod 755 $$policy && own_policy=1; \
	      trap 'rm -f '"$$policy" EXIT; \
	    fi; \
	    install="apt-get install -y -qq --no-install-recommends $(MONITORING_PACKAGES)"; \
	    DEBIAN_FRONTEND=noninteractive $$install >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $$install >/dev/null 2>&1; } || true; \
	    if [ -n "$$own_policy" ]; then rm -f $$policy; fi; \
	  fi; \
	fi
	@command -v promtool >/dev/null && command -v amtool >/dev/null || \
	  echo "warning: promtool/amtool missing (apt-get install $(MONITORING_PACKAGES)): tests/monitoring skips their checks"

CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver
BROWSER_PACKAGES := chromium chromium-driver

# Debian's chromium and its chromedriver drive the Lakehouse page's browser test (tests/e2e/test_make_run.py,
# which skips its browser steps without them). Installed from Debian's packages when running as root,
# never fatal; without recommends (no fonts or sound stacks a headless browser does not need).
check-browser:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing the browser for the UI test ($(BROWSER_PACKAGES))"; \
	    install="apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES)"; \
	    DEBIAN_FRONTEND=noninteractive $$install >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $$install >/dev/null 2>&1; } || true; \
	  fi; \
	fi
	@test -x $(CHROMIUM) && test -x $(CHROMEDRIVER) || \
	  echo "warning: chromium/chromedriver missing (apt-get install $(BROWSER_PACKAGES)): the browser test skips"

# Every tier except the slowest scenarios (marker "slow", ~20 min together), which CI runs next
# (.ci/run): 'make test' stays a loop a developer waits for.
test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# The Lakehouse page in a browser, alone (part of 'make test-slow'): run-all's whole stack in a temp home
# (~4 min), then sign in, open the page from the navigation, charts, Silver lag, no-login checks.
# Screenshots land in $$LAKEHOUSE_TEST_ARTIFACTS (default test-artifacts/).
test-ui: setup
	$(PY) -m pytest "tests/e2e/test_make_run.py::test_lakehouse_page_in_a_browser" -s $(PYTEST_ARGS)

# The unit tier starts no service (tests/unit/conftest.py fails a unit test that starts the broker,
# the embedded stack or Spark): tests that need one live in tests/integration/.
test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# docker-compose.yaml without Docker (part of 'make test'): the Compose Specification schema
# (check-jsonschema's copy of it), compose-lint, and the project's policies (required secrets, ports on
# the bind address only, pinned images, healthchecks, dropped capabilities).
.PHONY: test-deploy
test-deploy: setup
	$(PY) -m pytest tests/deploy $(PYTEST_ARGS)

# The distributed path for real (part of 'make test'): a Spark standalone master and worker started from
# pyspark's bin/spark-class on 127.0.0.1, the catalog on the local PostgreSQL server (skips without it);
# the layers' tables must equal a local-mode run's.
.PHONY: test-spark-cluster
test-spark-cluster: setup
	$(PY) -m pytest tests/integration/test_spark_cluster.py $(PYTEST_ARGS)

# The fault tier alone (part of 'make test'): kills, restarts, races, outages, bad input.
test-faults: setup
	$(PY) -m pytest -m fault $(PYTEST_ARGS)

bench: setup
	$(PY) -m lakehouse.bench $(BENCH_ARGS)

# Sustained load through make run's whole stack (temporary home, free ports): RATE trades/s in total
# for MINUTES minutes, then a drain; BENCH lines, a JSON report and a PNG chart. Takes MINUTES + ~8 min.
# SUSTAINED_ARGS passes more options, e.g. "--drain-minutes 5 --out bench-out --cleanup".
RATE ?= 2000
MINUTES ?= 15
SUSTAINED_ARGS ?=
.PHONY: bench-sustained
bench-sustained: setup
	$(PY) -m lakehouse.bench sustained --rate $(RATE) --minutes $(MINUTES) $(SUSTAINED_ARGS)

# The README's first command: install what is missing, then the embedded stack, replay producers
# for every exchange and Airflow standalone with the layer DAGs unpaused, in the foreground.
# Ctrl-C or SIGTERM stops every process it started. RUN_ARGS passes options to 'lakehouse run-all'.
RUN_ARGS ?=
run: setup
	$(VENV)/bin/lakehouse run-all $(RUN_ARGS)

up: setup
	$(VENV)/bin/lakehouse up

down:
	$(VENV)/bin/lakehouse down

status:
	$(VENV)/bin/lakehouse status

clean:
	-$(VENV)/bin/lakehouse down
	rm -rf .lakehouse
