// Command healthcheck is the container health probe of the Loanflow image:
// `healthcheck URL` exits 0 when GET URL answers 2xx within --timeout and 1
// otherwise, printing why. The runtime image is distroless (no shell, curl
// or wget), so docker-compose.yml's healthchecks run this binary against
// each process's /readyz, /healthz or /metrics.
//
// It owns no goroutines beyond the HTTP client's; errors are printed to
// stderr, and an answer outside 2xx wraps errUnhealthy.
package main
