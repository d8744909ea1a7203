package enginebench

import (
	"fmt"
	"strings"
)

// Result is one scenario's figures.
type Result struct {
	Name string
	// Value is the engine's figure in Unit; Baseline the baseline's.
	Value, Baseline float64
	Unit            string
	BaselineName    string
	// Ratio is the figure the goal is about (Value/Baseline unless the
	// scenario defines it otherwise).
	Ratio float64
	Goal  string
	Met   bool
	Note  string
}

// Report holds every result of a run.
type Report struct {
	Results []Result
}

// Markdown renders the report as a table.
func (r Report) Markdown() string {
	var sb strings.Builder
	sb.WriteString("| scenario | engine | baseline (same run) | ratio | goal | met |\n|---|---|---|---|---|---|\n")
	for _, x := range r.Results {
		met := "yes"
		if !x.Met {
			met = "**no**"
		}
		base := "—"
		if x.BaselineName != "" {
			base = fmt.Sprintf("%s: %s %s", x.BaselineName, fmtNum(x.Baseline), x.Unit)
		}
		ratio := "—"
		if x.Ratio != 0 {
			ratio = fmt.Sprintf("%.2f", x.Ratio)
		}
		fmt.Fprintf(&sb, "| %s | %s %s | %s | %s | %s | %s |\n", x.Name, fmtNum(x.Value), x.Unit, base, ratio, x.Goal, met)
	}
	for _, x := range r.Results {
		if x.Note != "" {
			fmt.Fprintf(&sb, "\n- %s: %s", x.Name, x.Note)
		}
	}
	sb.WriteString("\n")
	return sb.String()
}

func fmtNum(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}
