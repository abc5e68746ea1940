# gatewatch. `make test` is what CI runs: it installs the servers the integration tests
# use when they are missing, then vets and runs every test with the race detector.

GO        ?= go
PKGS      ?= ./...
APT_PKGS  := kcat clickhouse-server clickhouse-client rsyslog prometheus kubernetes-client chromium
FUZZTIME  ?= 10s
PROPERTY_SEEDS     ?= 4
PROPERTY_SCHEDULES ?= 3
SEED      ?=
# deploy/ is a Go module of its own (its tests read the manifests with the Kubernetes,
# compose-spec, Prometheus and BuildKit libraries, which the product does not need).
DEPLOY    := deploy

.PHONY: all build test deps vet lint fuzz property bench golden tidy-check conformance demo

all: build

build:
	$(GO) build -o gatewatch ./cmd/gatewatch

# deps installs the Debian packages the integration tests drive (kcat as an independent
# Kafka client, clickhouse-server, rsyslog, chromium to render replay's report) and
# deploy/'s tests run (promtool from prometheus, kubectl from kubernetes-client), once,
# when any is missing. A kubectl already on the PATH is used as it is (another package
# may own /usr/bin/kubectl).
deps:
	@missing=""; \
	command -v kcat >/dev/null 2>&1 || missing="$$missing kcat"; \
	command -v clickhouse-server >/dev/null 2>&1 || missing="$$missing clickhouse-server"; \
	command -v clickhouse-client >/dev/null 2>&1 || missing="$$missing clickhouse-client"; \
	command -v rsyslogd >/dev/null 2>&1 || [ -x /usr/sbin/rsyslogd ] || missing="$$missing rsyslog"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "missing:$$missing; install them as root: apt-get update && apt-get install -y $(APT_PKGS)"; \
			echo "(integration tests skip without them outside CI, and fail with CI=true)"; \
		fi; \
	fi

vet:
	$(GO) vet $(PKGS)
	cd $(DEPLOY) && $(GO) vet ./...

# Packages are tested one at a time (-p 1): the end-to-end tests run gatewatch against a
# loopback broker and servers with wall-clock timeouts (idle partitions, delivery), and
# two packages' race-instrumented suites at once on two cores made them flaky.
test: deps vet
	$(GO) test -race -p 1 -timeout 20m $(PKGS)
	cd $(DEPLOY) && $(GO) test -race -timeout 10m ./...

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi

# fuzz runs every fuzz target of every package (the parsers', the config loader's, the
# receivers' encoders') for FUZZTIME each; findings land in the package's testdata/fuzz/
# and are replayed by `make test`.
fuzz:
	@for pkg in $$($(GO) list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' $(PKGS)); do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$t"; $(GO) test $$pkg -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) || exit 1; \
		done; \
	done

# property runs the property tests `make test` skips, for PROPERTY_SEEDS synthetic seeds
# (from 1), or SEED alone: internal/cluster's TestScheduleProperty, one replica and then
# PROPERTY_SCHEDULES schedules drawn from the seed, of replicas that join and leave at
# random points of the traffic, each of which must raise exactly one replica's alerts
# (about half a minute a run under the race detector, so a seed about two); and
# cmd/gatewatch's TestKillProperty, a replica killed (SIGKILL) at a step of the hop and a
# hit drawn from the seed, then restarted beside another, which between them must page
# each attack once (about a minute a seed). A failure prints its seed and the command
# that reruns it alone.
property:
	GATEWATCH_PROPERTY=1 GATEWATCH_PROPERTY_SEEDS=$(PROPERTY_SEEDS) GATEWATCH_PROPERTY_SCHEDULES=$(PROPERTY_SCHEDULES) \
	GATEWATCH_PROPERTY_SEED=$(SEED) $(GO) test -race -count 1 -timeout 3h -run '^TestScheduleProperty$$' -v ./internal/cluster
	GATEWATCH_PROPERTY=1 GATEWATCH_PROPERTY_SEEDS=$(PROPERTY_SEEDS) GATEWATCH_PROPERTY_SEED=$(SEED) \
	$(GO) test -race -count 1 -timeout 3h -run '^TestKillProperty$$' -v ./cmd/gatewatch

# bench prints benchstat input: go run golang.org/x/perf/cmd/benchstat@latest old.txt new.txt
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 6 $(PKGS)

golden:
	$(GO) test $(PKGS) -run Golden -update
	git diff --stat -- '*testdata*'

tidy-check:
	$(GO) mod tidy
	cd $(DEPLOY) && $(GO) mod tidy
	git diff --exit-code go.mod go.sum $(DEPLOY)/go.mod $(DEPLOY)/go.sum

conformance:
	python3 ../shared/conformance/check.py

demo:
	$(GO) run ./cmd/gatewatch demo
