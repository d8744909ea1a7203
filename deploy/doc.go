// Package deploy holds Loanflow's production shape around the repository's
// docker-compose.yml and Dockerfile; it has no Go API. Its files:
//
//   - config/cdc.yaml: the CDC reader's config (connectors/postgres.Config)
//     for the compose stack, shipped in the image at /etc/loanflow.
//   - prometheus/prometheus.yml, prometheus/rules/*.yml and
//     prometheus/tests/*.yml: scrape config of every Loanflow process,
//     alerting rules and their promtool unit tests.
//   - grafana/provisioning and grafana/dashboards: the Prometheus datasource
//     and the pipeline, CDC and API dashboards.
//   - cmd/healthcheck: the HTTP probe the distroless image's healthchecks
//     run.
//   - README.md: how to run the stack and what to change for production.
//
// The tests of this package (go test ./deploy/..., part of `make test`)
// check the deployment files against the code, so they cannot drift apart
// silently:
// docker-compose.yml loads with the Compose loader; every Loanflow command in
// it is a real verb with real flags of the built binary (whose build uses the
// Dockerfile's own go build lines, CGO off); listen ports agree between the
// commands, healthchecks, published ports, Prometheus targets and the URLs
// processes give each other; cdc.yaml loads and validates with the reader's
// own code and matches postgres.Customer360View(); and every metric and
// label in the dashboards and alert rules is one the Go sources export.
// TestStackRunsAsComposed then runs every Loanflow service as a process of
// that binary with its composed command line, against real PostgreSQL,
// redis-server, the embedded broker and registry, in depends_on order with
// the services' own healthchecks, scrapes every Prometheus target and
// follows a row from PostgreSQL through CDC into the cache-invalidation job,
// and runs a real Prometheus server with the deploy config and rules
// against the processes.
// promtool, when installed (CI installs it through scripts/install-deps.sh),
// checks the Prometheus config, the rules, the rule unit tests and the
// PromQL of every dashboard panel.
package deploy
