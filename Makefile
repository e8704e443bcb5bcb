# rkube: build, run a lab cluster, test.
#
#   make up               install missing system packages, build, start a lab cluster of
#                         $(NODES) nodes (default 2; NODE_CPU=2 NODE_MEMORY=4Gi to size
#                         each node) and return once every node is Ready
#   make down             stop and remove everything `make up` made, and its state
#   make status           show each piece of the lab and its health
#   make test             every test (unit, integration on real etcd, real kubectl)
#   make lint             rustfmt check and clippy with warnings as errors
#   make fmt              format the workspace
#   make bench-apiserver  the apiserver benchmark (prints BENCH lines)
#   make bench-controllers  the controller-manager benchmark (prints BENCH lines)
#   make bench-scheduler  the scheduler benchmark (prints BENCH lines)
#   make bench-nodeagent  the container runtime and node agent benchmark, as root (BENCH lines)
#   make bench-network    the network benchmark, as root (prints BENCH lines)
#   make bench-lab        a 3-node lab: up time, pod startup, memory, as root (BENCH lines)
#   make hello-images     build and push the walkthrough's hello:1.0.0 and hello:1.1.0
#                         images to $(REGISTRY) (default: the lab's registry)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
STATE_DIR ?= $(CURDIR)/.state
RKUBE := $(CURDIR)/target/release/rkube
NODES ?= 2
NODE_CPU ?=
NODE_MEMORY ?=
UP_FLAGS := --nodes $(NODES) $(if $(NODE_CPU),--node-cpu $(NODE_CPU)) $(if $(NODE_MEMORY),--node-memory $(NODE_MEMORY))
# The lab makes network namespaces and runs containers, so it runs as root; the context
# still goes into the invoking user's kubeconfig.
AS_ROOT := $(SUDO) env KUBECONFIG="$${KUBECONFIG:-$$HOME/.kube/config}"
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Commands the build, the lab and the tests need, as command:debian-package.
SYSTEM_DEPS := etcd:etcd-server protoc:protobuf-compiler pkg-config:pkg-config \
	nft:nftables busybox:busybox-static ip:iproute2 bridge:iproute2 ping:iputils-ping cc:build-essential \
	docker-registry:docker-registry
# Libraries without a command, as pkg-config-name:debian-package.
SYSTEM_LIBS := libseccomp:libseccomp-dev

.PHONY: up down status test lint fmt bench-apiserver bench-controllers bench-scheduler bench-nodeagent bench-network bench-lab deps deps-check hello-images

up: deps
	$(CARGO) build --release --bins
	$(AS_ROOT) $(RKUBE) up --state-dir $(STATE_DIR) $(UP_FLAGS)

down:
	$(CARGO) build --release -p rkube-ctl --bin rkube
	$(AS_ROOT) $(RKUBE) down --state-dir $(STATE_DIR)

status:
	$(CARGO) build --release -p rkube-ctl --bin rkube
	$(AS_ROOT) $(RKUBE) status --state-dir $(STATE_DIR)

test: deps
	@[ -x /usr/bin/kubectl ] || echo "warning: /usr/bin/kubectl (v1.32) not found; the kubectl tests will fail" >&2
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast 2>&1 | tee target/test.log
	@awk '/^test result:/ { passed += $$4; failed += $$6 } END { printf "%d passed, %d failed\n", passed, failed }' target/test.log

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench-apiserver: deps
	$(CARGO) run --release -p rkube-tests --bin bench-apiserver

bench-controllers: deps
	$(CARGO) run --release -p rkube-tests --bin bench-controllers

bench-scheduler: deps
	$(CARGO) run --release -p rkube-tests --bin bench-scheduler

# Runs containers, so as root; compares with Debian's runc, installed when missing.
bench-nodeagent: deps
	@command -v runc >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq runc; }
	$(CARGO) build --release -p rkube-nodeagent --bin rkube-nodeagent
	$(CARGO) build --release -p rkube-tests --bin bench-nodeagent
	$(SUDO) $(CURDIR)/target/release/bench-nodeagent

bench-network: deps
	@command -v iperf3 >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3; }
	$(CARGO) build --release -p rkube-tests --bin bench-network
	$(SUDO) $(CURDIR)/target/release/bench-network

# `rkube up --nodes 3` with the release binaries, 30 pods' startup through a watch, and
# the control plane's and agents' resident memory; a lab of its own in a temporary
# directory (runs as root).
bench-lab: deps
	$(CARGO) build --release -p rkube-ctl -p rkube-nodeagent -p rkube-apiserver -p rkube-scheduler -p rkube-controller-manager --bins
	$(CARGO) build --release -p rkube-tests --bin bench-lab
	$(SUDO) $(CURDIR)/target/release/bench-lab

# The walkthrough's images: copies Debian's busybox-static into manifests/hello, builds
# hello:1.0.0 and hello:1.1.0 for $(REGISTRY) (default: the running lab's registry) and
# pushes them there.
hello-images:
	@command -v busybox >/dev/null 2>&1 || { echo "hello-images needs busybox-static (make deps)" >&2; exit 1; }
	cp "$$(command -v busybox)" manifests/hello/busybox
	$(CARGO) build -p rkube-ctl --bin rkubectl
	registry="$(REGISTRY)"; \
	if [ -z "$$registry" ]; then \
		registry="$$($(AS_ROOT) $(RKUBE) status --state-dir $(STATE_DIR) -o json | sed -n 's/.*"registry": *"\([^"]*\)".*/\1/p' | head -n1)"; \
	fi; \
	[ -n "$$registry" ] || { echo "no registry: start the lab (make up) or set REGISTRY=host:port" >&2; exit 1; }; \
	for version in 1.0.0 1.1.0; do \
		$(CURDIR)/target/debug/rkubectl image build -t "$$registry/hello:$$version" --build-arg VERSION=$$version manifests/hello; \
		$(CURDIR)/target/debug/rkubectl image push --insecure-registry "$$registry" "$$registry/hello:$$version"; \
	done

# Sets `missing` to the Debian packages whose command or library is absent.
FIND_MISSING = missing=""; \
	for pair in $(SYSTEM_DEPS); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v "$${pair%:*}" >/dev/null 2>&1 || missing="$$missing $${pair/*:/}"; \
	done; \
	for pair in $(SYSTEM_LIBS); do \
		pkg-config --exists "$${pair%:*}" 2>/dev/null || missing="$$missing $${pair/*:/}"; \
	done

# Installs the missing system packages (apt-get), and only when something is missing.
deps:
	@$(FIND_MISSING); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

# Fails, naming them, when system packages are missing.
deps-check:
	@$(FIND_MISSING); \
	if [ -n "$$missing" ]; then echo "missing system packages:$$missing" >&2; exit 1; fi
