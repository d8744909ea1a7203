// Package buildinfo describes the running binary for Prometheus:
// loanflow_build_info{version, revision, goversion} 1, from the module and
// VCS information the Go toolchain embeds. Every Loanflow process
// registers it, so a dashboard can show which build each one runs.
package buildinfo
