# multiredlock — build, test and demo. `make demo` and `make test` do all the set-up themselves.
SWIFT        ?= swift
SWIFT_FORMAT ?= $(SWIFT) format
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Extra arguments for `swift test`, e.g. make test TEST_ARGS='--filter ConnectionTests'
TEST_ARGS    ?=
# Tests under ThreadSanitizer: the ones that exercise the connection and the lock concurrently.
TSAN_FILTER  ?= ConcurrencyTests|ConnectionTests
# Where test runs keep their redis-server directories (pidfiles, logs); made fresh for each run.
TMPROOT      ?= /tmp

.PHONY: all deps build test test-only lint format tsan demo clean

all: build

## deps: install what is missing (libhiredis-dev, redis-server, redis-tools) with apt-get
deps:
	@missing=""; \
	[ -f /usr/include/hiredis/async.h ] || missing="$$missing libhiredis-dev"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ command -v redis-cli >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1; } || missing="$$missing redis-tools"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

## build: debug build of everything
build: deps
	$(SWIFT) build

## test: lint, then the whole suite against redis-servers the tests start on free 127.0.0.1 ports
test: deps lint test-only

# The test processes start their own servers under a fresh directory; whatever happens (failures,
# Ctrl-C), the trap stops every server whose pidfile is there, by PID, and removes the directory.
test-only: deps
	@root=$$(mktemp -d $(TMPROOT)/multiredlock-test.XXXXXX); \
	trap '.ci/stop-servers "'"$$root"'"' EXIT INT TERM; \
	MULTIREDLOCK_TEST_DIR="$$root" $(SWIFT) test $(TEST_ARGS)

## tsan: the concurrency tests under ThreadSanitizer (own build folder)
tsan: deps
	@root=$$(mktemp -d $(TMPROOT)/multiredlock-tsan.XXXXXX); \
	trap '.ci/stop-servers "'"$$root"'"' EXIT INT TERM; \
	MULTIREDLOCK_TEST_DIR="$$root" $(SWIFT) test --scratch-path .build-tsan --sanitize=thread \
		--filter '$(TSAN_FILTER)'

## lint: swift format in strict mode, as configured in .swift-format
lint:
	$(SWIFT_FORMAT) lint --strict --recursive Package.swift Sources Tests

## format: rewrite the sources in place with swift format
format:
	$(SWIFT_FORMAT) format --in-place --recursive Package.swift Sources Tests

## demo: start three local redis-servers, show the library at work, stop them
demo: deps
	$(SWIFT) build --product multiredlock-demo
	@root=$$(mktemp -d $(TMPROOT)/multiredlock-demo.XXXXXX); \
	trap '.ci/stop-servers "'"$$root"'"' EXIT INT TERM; \
	MULTIREDLOCK_TEST_DIR="$$root" $$($(SWIFT) build --show-bin-path)/multiredlock-demo

clean:
	rm -rf .build .build-tsan
