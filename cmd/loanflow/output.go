package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// outputFlag is the --output flag of every listing command: a table for
// people, JSON for scripts.
type outputFlag struct{ format string }

func (o *outputFlag) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.format, "output", "o", "table", "output format: table or json")
}

func (o outputFlag) validate() error {
	switch o.format {
	case "table", "json":
		return nil
	}
	return fmt.Errorf("--output %q: use table or json", o.format)
}

func (o outputFlag) json() bool { return o.format == "json" }

// write prints v as indented JSON, or calls table with a tab writer.
func (o outputFlag) write(w io.Writer, v any, table func(tw *tabwriter.Writer)) error {
	if err := o.validate(); err != nil {
		return err
	}
	if o.json() {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}
