# virtkeep — make help lists the targets.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
PREFIX ?= /usr/local
GOTEST_TIMEOUT ?= 25m
ITEST_LOG := $(CURDIR)/.itest.log
LEFTOVERS := $(CURDIR)/.leftovers.before

.PHONY: help deps build test unit lint bench reliability demo install clean deb

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

deps: ## install packages, start libvirtd/virtlogd, fetch Go modules (idempotent)
	@bash testenv/scripts/deps.sh
	@go mod download

deb: ## build dist/virtkeep_<version>_amd64.deb (offline, from the checkout)
	@bash systemd/debian/build.sh dist

build: ## build bin/virtkeep and bin/virtkeepd
	go build -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

# Tests named TestDisruptive* restart host-wide services (libvirtd): the
# parallel run leaves them out, and they run alone after it.
DISRUPTIVE := ^TestDisruptive

test: deps ## go.mod tidy, vet, then every unit and real-component integration test with -race (the disruptive ones alone, last); fails on anything left behind
	@go mod tidy -diff || { echo "go mod tidy would change go.mod/go.sum (run it and commit)"; exit 1; }
	go vet ./...
	@rm -f $(ITEST_LOG)
	@bash testenv/scripts/leftovers.sh snapshot $(LEFTOVERS)
	VIRTKEEP_ITEST_LOG=$(ITEST_LOG) go test -race -count=1 -timeout $(GOTEST_TIMEOUT) -skip '$(DISRUPTIVE)' ./... ; rc=$$?; \
	  VIRTKEEP_ITEST_LOG=$(ITEST_LOG) go test -race -count=1 -timeout $(GOTEST_TIMEOUT) -run '$(DISRUPTIVE)' ./cmd/virtkeepd/ || rc=1; \
	  bash testenv/scripts/count-itests.sh $(ITEST_LOG); \
	  bash testenv/scripts/leftovers.sh check $(LEFTOVERS) || rc=1; exit $$rc

unit: ## unit tests only: -short skips every test against real components
	go test -short -count=1 ./...

lint: ## go vet and staticcheck
	go vet ./...
	go run honnef.co/go/tools/cmd/staticcheck@v0.7.0 ./...

BENCH ?= .
bench: deps ## benchmarks side by side with the floor and virtnbdbackup (BENCH=regexp picks some; V=1 adds per-phase times)
	set -o pipefail; go test -run '^$$' -bench '$(BENCH)' -benchtime 1x -count=1 -timeout 90m $(if $(V),-v) ./... 2>&1 | tee bench.out

demo: deps build ## virtkeep as an operator uses it, through virtkeepd, on a VM that boots (cleaned up after)
	@go test -tags demo -count=1 -v -timeout 15m -run '^TestDemo$$' ./testenv/demo/ | grep -v '^=== RUN\|^--- PASS\|^PASS$$\|^ok '

FUZZ_TIME ?= 60s
REL_LOG := $(CURDIR)/.reliability.log
# Iterations per row: target-level rows, and daemon kills (each ~6 s with a
# VM: 100 kills of each of 7 operations take over an hour).
REL_ITERATIONS ?= 100
KILL_ITERATIONS ?= 100
reliability: deps ## the fault matrix at length (writes docs/RELIABILITY.md), then every fuzz target for FUZZ_TIME
	@rm -f $(REL_LOG)
	VIRTKEEP_RELIABILITY_LOG=$(REL_LOG) VIRTKEEP_CRASH_ITERATIONS=200 VIRTKEEP_FAULT_ITERATIONS=$(REL_ITERATIONS) go test -count=1 -timeout 90m \
	  -run '^(TestCrashWriter|TestCrashAtEveryStep|TestCorruptionBehindOurBack|TestTwoHostsOneBucket|TestBackupThroughServerRestart|TestCopyThroughSSHDRestart|TestBackupThroughSlowErroringServer|TestLocalTargetFullAndReadOnly|TestGCStalledPastStaleDeletesNothing)$$' ./target/
	VIRTKEEP_RELIABILITY_LOG=$(REL_LOG) go test -count=1 -timeout 30m -run '^(TestRecoveryBitmapMissing|TestRecoveryInconsistentBitmap)$$' ./hostd/backup/
	VIRTKEEP_RELIABILITY_LOG=$(REL_LOG) VIRTKEEP_SOAK_DOMAINS=30 go test -count=1 -timeout 30m -run '^TestWeekOfSchedules$$' ./hostd/daemon/
	VIRTKEEP_RELIABILITY_LOG=$(REL_LOG) VIRTKEEP_FAULT_ITERATIONS=$(KILL_ITERATIONS) go test -count=1 -timeout 180m -run '^(TestFaultKillDaemon|TestFaultCatalogLost|TestFaultQemuKilledMidBackup|TestFaultGuestShutdownMidBackup|TestFaultClockJumps|TestCopyResumesAfterS3Outage)$$' ./cmd/virtkeepd/
	VIRTKEEP_RELIABILITY_LOG=$(REL_LOG) VIRTKEEP_FAULT_ITERATIONS=$(REL_ITERATIONS) go test -count=1 -timeout 60m -run '^TestTwoDaemonsOneBucket$$' ./cmd/virtkeepd/
	VIRTKEEP_RELIABILITY_LOG=$(REL_LOG) go test -count=1 -timeout 30m -run '$(DISRUPTIVE)' ./cmd/virtkeepd/
	bash testenv/scripts/reliability.sh $(REL_LOG) > docs/RELIABILITY.md
	@cat docs/RELIABILITY.md
	for f in FuzzReplies FuzzHandshake; do go test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZ_TIME) ./nbd/ || exit 1; done
	for f in FuzzEnvelope FuzzIndex FuzzManifest FuzzPackIndex FuzzMerged; do go test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZ_TIME) ./target/ || exit 1; done
	go test -run '^$$' -fuzz '^FuzzConfig$$' -fuzztime $(FUZZ_TIME) ./cmd/internal/config/
	for f in FuzzMetadata FuzzDisk; do go test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZ_TIME) ./hostd/layout/ || exit 1; done
	go test -run '^$$' -fuzz '^FuzzSafeDomain$$' -fuzztime $(FUZZ_TIME) ./hostd/domain/
	go test -run '^$$' -fuzz '^FuzzQcow2Options$$' -fuzztime $(FUZZ_TIME) ./hostd/restore/
	go test -run '^$$' -fuzz '^FuzzCron$$' -fuzztime $(FUZZ_TIME) ./hostd/schedule/

install: build ## install the binaries under $(PREFIX)/bin, the systemd unit, the docs
	install -D -m 0755 bin/virtkeep $(DESTDIR)$(PREFIX)/bin/virtkeep
	install -D -m 0755 bin/virtkeepd $(DESTDIR)$(PREFIX)/bin/virtkeepd
	sed 's|/usr/local/|$(PREFIX)/|g' systemd/virtkeepd.service > virtkeepd.service.tmp
	install -D -m 0644 virtkeepd.service.tmp $(DESTDIR)/etc/systemd/system/virtkeepd.service
	rm -f virtkeepd.service.tmp
	install -D -m 0644 systemd/60-virtkeep-loop.rules $(DESTDIR)/etc/udev/rules.d/60-virtkeep-loop.rules
	install -D -m 0644 -t $(DESTDIR)$(PREFIX)/share/doc/virtkeep docs/*.md

clean: ## remove build output
	rm -rf bin $(ITEST_LOG) $(LEFTOVERS)
