package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/loanflow/loanflow/internal/localsvc"
)

var commands []func() *cobra.Command

// addCommand registers a top-level verb; call it from an init function.
func addCommand(fn func() *cobra.Command) { commands = append(commands, fn) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "loanflow",
		Short:         "Real-time credit and loan platform: CDC, stream jobs, API",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, fn := range commands {
		root.AddCommand(fn())
	}
	return root
}

func main() {
	// `loanflow dev` re-executes this binary to run the embedded broker.
	localsvc.MaybeRunBrokerChild()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "loanflow:", err)
		os.Exit(1)
	}
}
