# Loanflow developer commands. `make test` is what CI runs.
GO        ?= go
PKGS      ?= ./...
TESTFLAGS ?=
export GOFLAGS := -buildvcs=false

.PHONY: all build deps dev demo test test-short lint bench fuzz clean

all: build

build:
	$(GO) build -o bin/loanflow ./cmd/loanflow

# Installs PostgreSQL server binaries, redis-server and chromium from Debian
# packages when missing (as root); reports them otherwise.
deps:
	./scripts/install-deps.sh

# The whole system locally in one process (see README); Ctrl-C stops it.
dev: deps build
	./bin/loanflow dev

# Applications through a running `make dev` stack, with their decisions.
demo: build
	./bin/loanflow demo

# Everything CI runs: lint, then every unit and integration test against
# real PostgreSQL, Redis and the embedded broker.
test: deps lint
	$(GO) test -count=1 -timeout 20m $(TESTFLAGS) $(PKGS)

# Unit tests only (no servers).
test-short:
	$(GO) test -short -count=1 $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run go mod tidy"; $(GO) mod tidy -diff; exit 1; }

# The benchmark report: every goal beside its same-run baseline, and
# Loanflow beside Kafka Streams, Flink and Debezium (built from bench/peers
# with Maven), written to BENCHMARKS.md.
bench: deps build
	./bin/loanflow bench --peers --out BENCHMARKS.md

# Each fuzz target for FUZZTIME (the seed corpora also run in `make test`).
FUZZTIME ?= 30s
fuzz:
	@set -e; for t in $$(grep -rl --include='*_test.go' '^func Fuzz' . | sort); do \
		dir=$$(dirname $$t); \
		for f in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$t); do \
			echo "== $$dir $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$dir; \
		done; \
	done

clean:
	rm -rf bin
