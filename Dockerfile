# syntax=docker/dockerfile:1
#
# One image for every Loanflow process: `loanflow api`, `loanflow cdc run`,
# `loanflow job run NAME`, `loanflow bureau`, `loanflow keys init`, ...
# The entrypoint is the loanflow binary; the command picks the verb.
#
#   docker build -t loanflow:dev .
#   docker run --rm loanflow:dev --help
#
# The build is static (CGO_ENABLED=0: Pebble, pgx, franz-go and Tink are
# pure Go), so the runtime is distroless/static: no shell, no package
# manager, CA certificates and tzdata only, running as the unprivileged
# user nonroot (uid 65532). Health checks use /usr/local/bin/healthcheck, a
# tiny HTTP probe built from deploy/cmd/healthcheck, because the image has
# no curl or wget.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags="-s -w" -o /out/loanflow ./cmd/loanflow && \
    go build -trimpath -ldflags="-s -w" -o /out/healthcheck ./deploy/cmd/healthcheck
# Directories the processes write, owned by nonroot so that named volumes
# mounted on them start out writable (Docker copies ownership into a new
# volume from the image).
RUN mkdir -p /out/var/lib/loanflow/state /out/var/lib/loanflow/keys /out/var/lib/loanflow/savepoints

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/loanflow /out/healthcheck /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/var/lib/loanflow /var/lib/loanflow
# Avro schemas (the customer_360 view's value schema is read from here by
# deploy/config/cdc.yaml) and the example configs.
COPY schemas/avro /usr/share/loanflow/schemas/avro
COPY deploy/config /etc/loanflow
USER nonroot:nonroot
WORKDIR /var/lib/loanflow
# API and dashboard, bureau simulator, worker admin/metrics, CDC metrics.
EXPOSE 8080 8090 9100 9110
ENTRYPOINT ["/usr/local/bin/loanflow"]
CMD ["--help"]
