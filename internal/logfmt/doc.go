// Package logfmt holds the slog options Loanflow's log files share:
// durations as Go duration strings ("1.5s", "250ms") instead of the JSON
// handler's raw nanoseconds.
package logfmt
