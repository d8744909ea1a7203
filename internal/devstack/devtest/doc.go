// Package devtest starts the local stack of `loanflow dev` (package
// devstack) inside a test: on free ports, in a directory of the test's,
// logging to test.log there, stopped cleanly when the test ends. The
// command's tests and the browser tests share it.
package devtest
