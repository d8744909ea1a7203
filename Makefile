# Loanflow developer commands. `make test` is what CI runs.
GO        ?= go
PKGS      ?= ./...
TESTFLAGS ?=
export GOFLAGS := -buildvcs=false

.PHONY: all build deps test test-short lint bench soak fuzz clean

all: build

build:
	$(GO) build -o bin/loanflow ./cmd/loanflow

# Installs PostgreSQL server binaries, redis-server and chromium from Debian
# packages when missing (as root); reports them otherwise.
deps:
	./scripts/install-deps.sh

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

# The benchmark report: every goal beside its same-run baseline, written to
# BENCHMARKS.md.
bench: deps build
	./bin/loanflow bench --out BENCHMARKS.md

clean:
	rm -rf bin
