# Two commands on a fresh Debian machine: `make demo` and `make test`.
# They create the venv and, as root, apt-get install the servers they need.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# binary:package pairs of the real servers the demo and the tests run (never mocked)
SYSTEM_BINARIES := haproxy:haproxy socat:socat prometheus:prometheus named:bind9 \
	nsupdate:bind9-utils dig:dnsutils pdns_server:pdns-server knotd:knot \
	knsupdate:knot-dnsutils chromium:chromium
FAIL ?= 0
QUICK ?= 0

.PHONY: demo test test-long bench lint system-deps venv clean

system-deps:
	@missing=""; \
	for pair in $(SYSTEM_BINARIES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	[ -f /usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql ] || missing="$$missing pdns-backend-sqlite3"; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing -- run: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check cutover tests demo
	$(VENV)/bin/ruff format --check cutover tests demo
	$(VENV)/bin/mypy cutover
	$(VENV)/bin/lint-imports

test: system-deps venv lint
	$(VENV)/bin/pytest -q

test-long: system-deps venv
	$(VENV)/bin/pytest -q -m long

# Benchmarks print tables (never timed tests); QUICK=1 is the small smoke size CI runs.
bench: system-deps venv
	$(PY) benchmarks/breach_rollback.py $(if $(filter 1,$(QUICK)),--quick,)
	$(PY) benchmarks/dns_stage.py $(if $(filter 1,$(QUICK)),--quick,)
	$(PY) benchmarks/rollback_actuation.py $(if $(filter 1,$(QUICK)),--quick,)
	$(PY) benchmarks/scale.py $(if $(filter 1,$(QUICK)),--quick,)
	$(PY) benchmarks/metrics_render.py $(if $(filter 1,$(QUICK)),--quick,)

demo: system-deps venv
	$(PY) demo/run.py $(if $(filter 1,$(FAIL)),--fail,)

clean:
	rm -rf $(VENV) var artifacts
