# multiredlock — build, test and demo. `make demo` and `make test` do all the set-up themselves.
SWIFT        ?= swift
SWIFT_FORMAT ?= $(SWIFT) format
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Extra arguments for `swift test`, e.g. make test TEST_ARGS='--filter ConnectionTests'
TEST_ARGS    ?=
# Tests under ThreadSanitizer: the ones that exercise the connection and the lock concurrently
# (swift test matches the regular expression against test identifiers: module.Type/test).
TSAN_FILTER  ?= ConnectionTests|WriteBatchTests|ConnectionQueueExecutorTests|TaskExecutorTests|FaultTests|RedlockIntegrationTests|CloseReleasesFirstTests|ScopedLockTests|MultiResourceAndFencingTests|RestartedNodeTests|RedlockUnitTests|MockNodeTests|SafetyRegressionTests|SafetyOptionTests
# How long `make soak` runs scenario 12 (redlock clients contending while servers crash and hang), in seconds.
DURATION     ?= 600
# How long `make churn` opens, kills and closes sockets from many tasks at once, in seconds.
CHURN_SECONDS ?= 60
# Tests to leave out under ThreadSanitizer (a regular expression; none by default).
TSAN_SKIP    ?=
# Where test runs keep their redis-server directories (pidfiles, logs); made fresh for each run.
TMPROOT      ?= /tmp

# `make sim`: how many seeds (from 1; about 2 minutes on 2 cores), or one seed to replay (SEED=, with
# STEPS= for a shortened history), and extra arguments (SIM_ARGS='--no-quarantine', see redlock-sim --help).
SEEDS        ?= 400
SEED         ?=
STEPS        ?=
SIM_ARGS     ?=

.PHONY: all deps build test test-only test-pool-held lint format tsan asan demo clean bench verify soak churn partition man docs sim

all: build

## deps: install what is missing (libhiredis-dev, redis-server, redis-tools, a C compiler for the
## bench's floor) with apt-get (sudo when not root). Debian's redis-server package also enables and
## starts its system service on 127.0.0.1:6379 (no password); the Makefile leaves that service alone
## (README, Security).
deps:
	@missing=""; \
	[ -f /usr/include/hiredis/async.h ] || missing="$$missing libhiredis-dev"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ command -v redis-cli >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1; } || missing="$$missing redis-tools"; \
	{ command -v cc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1; } || missing="$$missing gcc"; \
	if [ -n "$$missing" ]; then \
		echo "installing with apt-get$(if $(SUDO), (sudo)):$$missing"; \
		case "$$missing" in *redis-server*) echo "note: the redis-server package starts a system service on 127.0.0.1:6379 without a password (README, Security)";; esac; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

## build: debug build of everything; installs nothing (on a fresh machine run `make deps` first)
build:
	@[ -f /usr/include/hiredis/async.h ] || { echo "build: hiredis headers are missing: run 'make deps' (installs libhiredis-dev, redis-server, redis-tools with apt-get)" >&2; exit 1; }
	$(SWIFT) build

## test: lint, then the whole suite against redis-servers the tests start on free 127.0.0.1 ports
test: deps lint test-only

# The test processes start their own servers under a fresh directory; whatever happens (failures,
# Ctrl-C), the trap stops every server whose pidfile is there, by PID, and removes the directory.
test-only: deps
	@root=$$(mktemp -d $(TMPROOT)/multiredlock-test.XXXXXX); \
	trap '.ci/stop-servers "'"$$root"'"' EXIT INT TERM; \
	MULTIREDLOCK_TEST_DIR="$$root" $(SWIFT) test $(TEST_ARGS)

## test-pool-held: the whole suite with every thread of the cooperative pool blocked for 7 s,
## HOLD_AT_MS (default 1000) after the run starts: finds tests that depend on the pool's promptness
## (see Tests/MultiRedlockTests/PoolHoldTests.swift). Not part of CI: a search, run by hand.
HOLD_AT_MS ?= 1000
test-pool-held: deps
	MULTIREDLOCK_TEST_HOLD_POOL_AT_MS=$(HOLD_AT_MS) $(MAKE) --no-print-directory test-only

## tsan: the concurrency tests under ThreadSanitizer (own build folder)
tsan: deps
	@root=$$(mktemp -d $(TMPROOT)/multiredlock-tsan.XXXXXX); \
	trap '.ci/stop-servers "'"$$root"'"' EXIT INT TERM; \
	MULTIREDLOCK_TEST_DIR="$$root" $(SWIFT) test --scratch-path .build-tsan --sanitize=thread \
		--filter '$(TSAN_FILTER)' $(if $(TSAN_SKIP),--skip '$(TSAN_SKIP)')

## asan: the whole suite under AddressSanitizer (own build folder). Leak checking is off: it reports
## XCTest's own allocations and objects still alive when a child process exits.
asan: deps
	@root=$$(mktemp -d $(TMPROOT)/multiredlock-asan.XXXXXX); \
	trap '.ci/stop-servers "'"$$root"'"' EXIT INT TERM; \
	ASAN_OPTIONS=detect_leaks=0 MULTIREDLOCK_TEST_DIR="$$root" \
		$(SWIFT) test --scratch-path .build-asan --sanitize=address -Xswiftc -use-ld=lld

## lint: swift format in strict mode, as configured in .swift-format
lint:
	$(SWIFT_FORMAT) lint --strict --recursive Package.swift Sources Tests

## format: rewrite the sources in place with swift format
format:
	$(SWIFT_FORMAT) format --in-place --recursive Package.swift Sources Tests

## demo: start three local redis-servers, show the library at work, stop them
demo: deps
	$(SWIFT) build --product redlock && $(SWIFT) build --product multiredlock-demo
	@root=$$(mktemp -d $(TMPROOT)/multiredlock-demo.XXXXXX); \
	trap '.ci/stop-servers "'"$$root"'"' EXIT INT TERM; \
	MULTIREDLOCK_TEST_DIR="$$root" $$($(SWIFT) build --show-bin-path)/multiredlock-demo

## bench: release build, 5 local redis-servers, redis-benchmark limits, the bare-C floor (.ci/floor.c),
## redlock-bench, one table of ratios (medians over ROUNDS rounds, default 3), e.g. make bench ROUNDS=5;
## see .ci/bench
bench: deps
	@ROUNDS="$(ROUNDS)" SWIFT="$(SWIFT)" TMPROOT="$(TMPROOT)" .ci/bench

## soak: scenario 12 for DURATION seconds (make soak DURATION=3600); prints progress and a final count
soak: deps
	@root=$$(mktemp -d $(TMPROOT)/multiredlock-soak.XXXXXX); \
	trap '.ci/stop-servers "'"$$root"'"' EXIT INT TERM; \
	MULTIREDLOCK_TEST_DIR="$$root" MULTIREDLOCK_SOAK_SECONDS="$(DURATION)" $(SWIFT) test --filter SoakTests

## churn: sockets refused, killed mid-command and closed by 12 tasks at once for CHURN_SECONDS (default
## 60; the regression test for the socket watcher, see Sources/Hiredis/SocketWatcher.swift)
churn: deps
	@root=$$(mktemp -d $(TMPROOT)/multiredlock-churn.XXXXXX); \
	trap '.ci/stop-servers "'"$$root"'"' EXIT INT TERM; \
	MULTIREDLOCK_TEST_DIR="$$root" MULTIREDLOCK_CHURN_SECONDS="$(CHURN_SECONDS)" $(SWIFT) test --filter SocketChurnTests

## verify: model-check the fencing-token protocol with spin (Tests/Model/fencing.pml); the broken
## variant without write-back must produce a counterexample. Installs spin with apt-get when missing.
verify:
	@command -v spin >/dev/null 2>&1 || { echo "installing with apt-get$(if $(SUDO), (sudo)): spin"; $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y spin; }
	@dir=$$(mktemp -d $(TMPROOT)/multiredlock-verify.XXXXXX); trap 'rm -rf "'"$$dir"'"' EXIT; \
	cp Tests/Model/fencing.pml "$$dir"/ && cd "$$dir" && \
	echo "== spin: the protocol (tokens strictly increase for later attempts)" && \
	spin -a fencing.pml && cc -O2 -DSAFETY -DCOLLAPSE -o pan pan.c && ./pan -m100000 > ok.log 2>&1; \
	grep -E "states, stored|errors:" ok.log; \
	grep -q "errors: 0" ok.log || { echo "FAIL: spin found a violation in the protocol"; cat ok.log; exit 1; }; \
	echo "== spin: the broken variant without write-back (must fail)" && \
	spin -DNO_WRITE_BACK -a fencing.pml && cc -O2 -DSAFETY -o pan pan.c && ./pan -m100000 > bad.log 2>&1; \
	grep -q "assertion violated" bad.log || { echo "FAIL: the broken variant was not caught"; cat bad.log; exit 1; }; \
	grep "assertion violated" bad.log; \
	echo "   counterexample:"; spin -DNO_WRITE_BACK -t -p -g fencing.pml | grep -E "assert|counter\[|maxIssued|token =" | tail -12; \
	echo "verify: 2 passed, 0 failed"

## partition: each redis-server in a network namespace of its own, the redlock CLI as the client in
## two more; partitions by taking links down (needs root and iproute2, else it skips); see .ci/partition
partition: deps
	$(SWIFT) build --product redlock
	@REDLOCK="$$($(SWIFT) build --show-bin-path)/redlock" TMPROOT="$(TMPROOT)" .ci/partition

## docs: the DocC catalog of MultiRedlock, with warnings as errors (broken or ambiguous links fail):
## the toolchain's swift-symbolgraph-extract reads the built module, its docc builds the archive
## into .build-docs/MultiRedlock.doccarchive; offline, a few seconds after the build
DOCC             ?= $(shell command -v docc 2>/dev/null || echo /opt/swift/usr/bin/docc)
SYMBOLGRAPH_EXTRACT ?= $(shell command -v swift-symbolgraph-extract 2>/dev/null || echo /opt/swift/usr/bin/swift-symbolgraph-extract)
docs: deps
	$(SWIFT) build --target MultiRedlock
	@bin=$$($(SWIFT) build --show-bin-path); \
	rm -rf .build-docs/graphs && mkdir -p .build-docs/graphs && \
	$(SYMBOLGRAPH_EXTRACT) -module-name MultiRedlock -target $$(uname -m)-unknown-linux-gnu \
		-I "$$bin/Modules" -I Modules/CHiredis -I Modules/CEpoll \
		-experimental-allowed-reexported-modules=Hiredis -minimum-access-level public -output-dir .build-docs/graphs && \
	$(DOCC) convert Sources/MultiRedlock/MultiRedlock.docc --additional-symbol-graph-dir .build-docs/graphs \
		--fallback-display-name MultiRedlock --fallback-bundle-identifier multiredlock \
		--output-path .build-docs/MultiRedlock.doccarchive --warnings-as-errors && \
	echo "docs: built .build-docs/MultiRedlock.doccarchive (0 warnings)"

## man: redlock(1), generated by argument-parser's generate-manual from the same help text as
## `redlock --help`, into .build/man/redlock.1 (read it with man -l .build/man/redlock.1)
man:
	$(SWIFT) build --product redlock && $(SWIFT) build --product generate-manual
	@bin=$$($(SWIFT) build --show-bin-path); mkdir -p .build/man && \
	"$$bin/generate-manual" "$$bin/redlock" --output-directory .build/man && \
	echo "man: wrote .build/man/redlock.1; install it with" \
		"install -D -m 644 .build/man/redlock.1 /usr/local/share/man/man1/redlock.1"

## sim: randomized fault simulation over mock nodes, the MutualExclusionChecker as oracle (release
## build); make sim SEEDS=100000 runs long, make sim SEED=42 replays one seed with its history
sim:
	$(SWIFT) build -c release --product redlock-sim
	$$($(SWIFT) build -c release --show-bin-path)/redlock-sim \
		$(if $(SEED),--seed $(SEED) $(if $(STEPS),--steps $(STEPS)),--seeds $(SEEDS)) $(SIM_ARGS)

clean:
	rm -rf .build .build-tsan .build-asan .build-docs
