// Package debughttp mounts Go's profiling endpoints (/debug/pprof/...) on
// an admin mux. Every admin listener of Loanflow (job workers, the CDC
// reader's metrics listener, the schema registry's is its own) serves
// them; the public API listener never does.
package debughttp
