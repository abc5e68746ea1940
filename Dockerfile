# syntax=docker/dockerfile:1
#
# gatewatch's container image: a static binary on distroless, running as a non-root user.
#
#   docker build --build-arg VERSION=1.4.0 --build-arg COMMIT=$(git rev-parse HEAD) -t gatewatch .
#
# No HEALTHCHECK: the orchestrator probes /healthz (liveness) and /readyz (readiness) on
# admin.listen, and the image has no shell or client to probe with anyway.
# Pin the base images by digest (image@sha256:...) where you build for production.
#
# deploy/deploy_test.go builds the binary with this file's ENV and `go build` command (on
# the machine, since no Docker engine runs in CI), and checks the final stage is non-root,
# distroless and has no HEALTHCHECK.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first, so that a change to the code does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=devel
ARG COMMIT=unknown
# Static (no libc at run time), the build machine's paths left out, the version and
# commit stamped in for `gatewatch version` (the context has no .git to stamp them from).
ENV CGO_ENABLED=0
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
	go build -trimpath -buildvcs=false -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
	-o /out/gatewatch ./cmd/gatewatch
# data_dir, owned by the image's user: Docker copies it (and its owner) into a new named
# volume mounted there, so the volume is writable without running as root.
RUN mkdir -p /out/data && chown 65532:65532 /out/data && chmod 0700 /out/data

# traffic is the compose demo's traffic generator: Kafka's own console producer with
# gatewatch beside it to generate the records (deploy/compose/traffic.sh). Not for
# production; `docker build` without --target builds only the stages the last one needs.
FROM apache/kafka:4.1.0 AS traffic
COPY --from=build /out/gatewatch /usr/local/bin/gatewatch

FROM gcr.io/distroless/static-debian12:nonroot
# distroless/static carries the CA certificates (TLS to Kafka, ClickHouse, Slack, the
# SIEM) and /etc/passwd with the nonroot user (65532); nothing else.
COPY --from=build /out/gatewatch /usr/local/bin/gatewatch
COPY --from=build --chown=65532:65532 /out/data /var/lib/gatewatch
USER 65532:65532
# admin.listen in the shipped configs: /metrics, /healthz, /readyz.
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/gatewatch"]
CMD ["run", "--config", "/etc/gatewatch/gatewatch.yaml", "--log-format", "json"]
