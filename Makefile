# spire-tpm-attestor — every target installs what it needs on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config gcc nginx
# v1.15.x needs a dependency (ejbca-go-client-sdk v1.1.0) the module proxy here does not serve.
SPIRE_VERSION ?= v1.14.5
# Outside the checkout, so fresh clones on the same machine reuse the build.
SPIRE_BIN ?= $(HOME)/.cache/spire-tpm-attestor/spire/$(SPIRE_VERSION)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-packages proto test demo bench bench-process bench-process-profile lint spire clean

install: $(STAMP)

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

$(STAMP): pyproject.toml setup.py proto/*.proto
	@$(MAKE) --no-print-directory system-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q grpcio-tools setuptools wheel
	$(MAKE) --no-print-directory proto
	$(PY) -m pip install -q -e '.[agent,dev]'
	touch $(STAMP)

proto:
	$(PY) -c "import setup; setup.generate_protos()"

# Real SPIRE binaries for the integration tests, built from the Go module proxy.
# Not `go install pkg@version`: that always looks up the module's latest version
# (deprecation check, @v/list or @latest), which a proxy serving only pinned
# versions answers with 403/404. Instead download the exact module version and
# build its two commands in place with the module's own go.mod/go.sum (the same
# build list `go install pkg@version` would use). cgo is required for SQLite.
SPIRE_MODULE := github.com/spiffe/spire
spire: $(SPIRE_BIN)/spire-server

$(SPIRE_BIN)/spire-server:
	@if command -v go >/dev/null; then \
	  set -e; mkdir -p $(SPIRE_BIN); \
	  go mod download $(SPIRE_MODULE)@$(SPIRE_VERSION); \
	  cd "$$(go env GOMODCACHE)/$(SPIRE_MODULE)@$(SPIRE_VERSION)"; \
	  CGO_ENABLED=1 GOFLAGS=-mod=readonly go build -trimpath \
	    -ldflags '-X $(SPIRE_MODULE)/pkg/common/version.gittag=$(SPIRE_VERSION:v%=%)' \
	    -o $(SPIRE_BIN)/ ./cmd/spire-server ./cmd/spire-agent; \
	else echo "go not found: real-SPIRE tests will be skipped"; fi

test: install
	-@$(MAKE) --no-print-directory spire
	SPIRE_BIN=$(SPIRE_BIN) $(PY) -m pytest -q -ra $(PYTEST_ARGS)

demo: install
	$(PY) -m spire_tpm_attestor.testing.demo

bench: install
	$(PY) -m tests.bench

# The server plugin as a process, as SPIRE runs it (Go driver over go-plugin gRPC):
# `make bench-process BASELINE=a19ce94` interleaves batches of that commit and this tree.
# Figures go to stdout and bench/process.json. PROCBENCH_ARGS e.g. "--rounds 20".
bench-process: install
	$(PY) -m tests.bench.procbench $(if $(BASELINE),--baseline $(BASELINE)) $(PROCBENCH_ARGS)

# Where the server plugin process spends its CPU per attestation (py-spy, this tree only).
bench-process-profile: install
	$(PY) -m pip install -q py-spy
	$(PY) -m tests.bench.procbench --profile $(PROCBENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy spire_tpm_attestor agent_plugin server_plugin

clean:
	rm -rf $(VENV) build *.egg-info spire_tpm_attestor/pb/*_pb2*.py*
