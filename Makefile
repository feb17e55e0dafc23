# The project's entry points. Every target that needs Python installs the venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
UPSTREAM_CLIENT_DIR := $(VENV)/upstream
PROTO := protos/ondewo/sip/sip.proto

.PHONY: install proto run test bench lint typecheck check images kind-up deploy e2e clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[worker,operator,test,local]'
	# Upstream's generated client, never installed (it is an `ondewo` package too): a test
	# streams call audio with it to prove the wire is upstream's.
	$(PY) -m pip download --quiet --no-deps --dest $(UPSTREAM_CLIENT_DIR) 'ondewo-sip-client==5.5.2'
	touch $@

# Regenerates the Python code for the wire contract; tests/test_proto.py fails when it is stale.
proto: $(INSTALLED)
	$(PY) protos/generate.py

run: $(INSTALLED)
	$(PY) -m sip_worker.local_run

test: $(INSTALLED)
	$(PY) -m pytest

bench: $(INSTALLED)
	@set -e; for bench in bench/bench_*.py; do echo "== $$bench"; $(PY) $$bench; done

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(INSTALLED)
	$(VENV)/bin/mypy

check: lint typecheck test

# ---- Images and a kind cluster (need docker with a running engine, kind, kubectl, helm) ----
IMAGE_TAG ?= dev
WORKER_IMAGE ?= sip-worker:$(IMAGE_TAG)
OPERATOR_IMAGE ?= sip-operator:$(IMAGE_TAG)
SIPP_IMAGE ?= sipp-peer:$(IMAGE_TAG)
KIND_CLUSTER ?= sip-operator
KUBE_CONTEXT := kind-$(KIND_CLUSTER)
E2E_NAMESPACE := sip-e2e
RELEASE ?= sip-operator

# Stops with a clear message when a tool is missing or the Docker engine is not running.
define require
	@for tool in $(1); do command -v $$tool >/dev/null 2>&1 || { \
	  echo "make $@: '$$tool' is not installed (needed: $(1))" >&2; exit 1; }; done
	@if echo "$(1)" | grep -qw docker && ! docker info >/dev/null 2>&1; then \
	  echo "make $@: no Docker engine is reachable ('docker info' failed); start Docker first" >&2; \
	  exit 1; fi
endef

images:
	$(call require,docker)
	docker build -f worker/Dockerfile -t $(WORKER_IMAGE) .
	docker build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .

kind-up:
	$(call require,docker kind kubectl)
	kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' \
	  || kind create cluster --name '$(KIND_CLUSTER)' --wait 180s
	kubectl --context $(KUBE_CONTEXT) get nodes

# Builds and loads the images into kind and installs the chart into $(E2E_NAMESPACE).
deploy: kind-up images
	$(call require,docker kind kubectl helm)
	docker build -t $(SIPP_IMAGE) tests/e2e/sipp-peer
	kind load docker-image --name '$(KIND_CLUSTER)' $(WORKER_IMAGE) $(OPERATOR_IMAGE) $(SIPP_IMAGE)
	helm upgrade --install $(RELEASE) charts/sip-operator --kube-context $(KUBE_CONTEXT) \
	  --namespace $(E2E_NAMESPACE) --create-namespace --wait --timeout 5m \
	  --set operator.image.repository=$(firstword $(subst :, ,$(OPERATOR_IMAGE))) \
	  --set operator.image.tag=$(IMAGE_TAG) \
	  --set worker.image.repository=$(firstword $(subst :, ,$(WORKER_IMAGE))) \
	  --set worker.image.tag=$(IMAGE_TAG)

# The whole path on kind: the test runs `make deploy`, then calls through a session's Service,
# checks `kubectl get sips`, and that the history survives worker and Redis restarts.
e2e:
	$(call require,docker kind kubectl helm)
	$(MAKE) install
	KIND_CLUSTER='$(KIND_CLUSTER)' IMAGE_TAG='$(IMAGE_TAG)' $(PY) -m pytest tests/e2e -m e2e -v -rs

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
