// Package jobs holds Loanflow's jobs and their registry: each job
// registers itself (Register, from an init function) with a name, a summary
// and a Build function that declares its graph for an Env. The CLI
// (`loanflow job run NAME`) and the local stack (`loanflow dev`) find jobs
// here.
package jobs
