# rkube: build, run a lab cluster, test.
#
#   make up               install missing system packages, build, start the control plane
#   make down             stop it and remove its state
#   make status           show what runs
#   make test             every test (unit, integration on real etcd, real kubectl)
#   make lint             rustfmt check and clippy with warnings as errors
#   make fmt              format the workspace
#   make bench-apiserver  the apiserver benchmark (prints BENCH lines)
#   make bench-controllers  the controller-manager benchmark (prints BENCH lines)
#   make bench-scheduler  the scheduler benchmark (prints BENCH lines)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
STATE_DIR ?= $(CURDIR)/.state
RKUBE := $(CURDIR)/target/release/rkube
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Commands the build, the lab and the tests need, as command:debian-package.
SYSTEM_DEPS := etcd:etcd-server protoc:protobuf-compiler pkg-config:pkg-config \
	nft:nftables busybox:busybox-static ip:iproute2 cc:build-essential \
	docker-registry:docker-registry
# Libraries without a command, as pkg-config-name:debian-package.
SYSTEM_LIBS := libseccomp:libseccomp-dev

.PHONY: up down status test lint fmt bench-apiserver bench-controllers bench-scheduler deps deps-check

up: deps
	$(CARGO) build --release --bins
	$(RKUBE) up --state-dir $(STATE_DIR)

down:
	$(CARGO) build --release -p rkube-ctl --bin rkube
	$(RKUBE) down --state-dir $(STATE_DIR)

status:
	$(CARGO) build --release -p rkube-ctl --bin rkube
	$(RKUBE) status --state-dir $(STATE_DIR)

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
