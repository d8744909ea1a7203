package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/loanflow/loanflow/jobs"
	"github.com/loanflow/loanflow/pipeline"
)

// resetPlan is what `job reset` does (or would do).
type resetPlan struct {
	Job      string        `json:"job"`
	Group    string        `json:"group"`
	Target   string        `json:"target"`
	Offsets  []resetOffset `json:"offsets"`
	Internal []string      `json:"delete_topics"`
	Executed bool          `json:"executed"`
}

// resetOffset is one input partition's move.
type resetOffset struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	From      int64  `json:"from"` // -1: nothing committed
	To        int64  `json:"to"`
	Why       string `json:"why"`
}

func newJobResetCmd() *cobra.Command {
	var brokers, datetime string
	var earliest, execute bool
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "reset NAME (--to-earliest | --to-datetime TIME) [--execute]",
		Short: "Rewind a stopped job's inputs; a dry-run preview unless --execute",
		Long: `Like kafka-streams-application-reset: moves the committed offsets of the
job's input topics to their earliest records or to the first record at or
after TIME, and deletes the job's internal topics (changelogs, repartition
topics), so the job reprocesses its inputs from there with empty state.
Topics a job reads as a table (customer_360 in decisions) always go back to
their earliest record: the table is rebuilt from the whole topic. Workers
wipe local state whose changelog was deleted when they start again.

Without --execute it only prints what it would do. The job must be stopped
(loanflow job stop NAME). Outputs already written stay: downstream readers
see the reprocessed records again.`,
		Example: `  loanflow job reset portfolio --to-earliest
  loanflow job reset decisions --to-datetime 2026-12-01T00:00:00Z --execute`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			var at time.Time
			switch {
			case earliest == (datetime != ""):
				return fmt.Errorf("give exactly one of --to-earliest and --to-datetime")
			case datetime != "":
				t, err := time.Parse(time.RFC3339, datetime)
				if err != nil {
					return fmt.Errorf("--to-datetime %q: use RFC 3339, e.g. 2026-12-01T00:00:00Z", datetime)
				}
				at = t
			}
			plan, err := planReset(cmd.Context(), args[0], splitList(brokers), at, execute)
			if err != nil {
				return err
			}
			return out.write(cmd.OutOrStdout(), plan, func(tw *tabwriter.Writer) { printReset(tw, plan) })
		},
	}
	brokersFlag(cmd, &brokers)
	cmd.Flags().BoolVar(&earliest, "to-earliest", false, "rewind the inputs to their earliest records")
	cmd.Flags().StringVar(&datetime, "to-datetime", "", "rewind the inputs to the first record at or after this time (RFC 3339)")
	cmd.Flags().BoolVar(&execute, "execute", false, "do it (without: a dry-run preview)")
	out.register(cmd)
	return cmd
}

func printReset(tw *tabwriter.Writer, p resetPlan) {
	verb := "would move"
	if p.Executed {
		verb = "moved"
	}
	fmt.Fprintf(tw, "job %s (group %s), reset to %s: %s these offsets\n\n", p.Job, p.Group, p.Target, verb)
	fmt.Fprintln(tw, "TOPIC\tPARTITION\tFROM\tTO\tWHY")
	for _, o := range p.Offsets {
		from := fmt.Sprint(o.From)
		if o.From < 0 {
			from = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\n", o.Topic, o.Partition, from, o.To, o.Why)
	}
	del := "would delete"
	if p.Executed {
		del = "deleted"
	}
	fmt.Fprintf(tw, "\n%s the internal topics: %s\n", del, orDash(strings.Join(p.Internal, ", ")))
	if !p.Executed {
		fmt.Fprintln(tw, "dry run: nothing changed; add --execute to reset")
	} else {
		fmt.Fprintf(tw, "done: start the job again with loanflow job run %s\n", p.Job)
	}
}

// resetTopics sorts a job's topics into stream inputs, table inputs and
// internal topics.
func resetTopics(plan *pipeline.Plan) (streams, tables, internal []string) {
	for _, s := range plan.Subtopologies {
		for _, in := range s.Inputs {
			switch {
			case in.Repartition:
				internal = append(internal, in.Topic)
			case slices.Contains(s.TableSources, in.Topic):
				tables = append(tables, in.Topic)
			default:
				streams = append(streams, in.Topic)
			}
		}
		internal = append(internal, s.Changelogs...)
	}
	for _, l := range []*[]string{&streams, &tables, &internal} {
		sort.Strings(*l)
		*l = slices.Compact(*l)
	}
	return streams, tables, internal
}

func planReset(ctx context.Context, job string, brokers []string, at time.Time, execute bool) (resetPlan, error) {
	b, err := jobs.Builder(job, jobs.Env{Offline: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return resetPlan{}, err
	}
	plan, err := b.Plan()
	if err != nil {
		return resetPlan{}, err
	}
	c, err := newJobCtl(job, brokers)
	if err != nil {
		return resetPlan{}, err
	}
	defer c.close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	rp := resetPlan{Job: job, Group: c.group(), Target: "earliest"}
	if !at.IsZero() {
		rp.Target = at.UTC().Format(time.RFC3339)
	}
	g, err := c.describe(ctx)
	if err != nil {
		return rp, err
	}
	if len(g.Members) > 0 {
		return rp, fmt.Errorf("job %s is running (%d workers in group %s): stop it first with loanflow job stop %s",
			job, len(g.Members), c.group(), job)
	}
	streams, tables, internal := resetTopics(plan)
	committed, err := c.adm.FetchOffsets(ctx, c.group())
	if err != nil {
		return rp, fmt.Errorf("fetching the offsets of %s: %w", c.group(), err)
	}
	starts, err := c.adm.ListStartOffsets(ctx, append(slices.Clone(streams), tables...)...)
	if err != nil {
		return rp, fmt.Errorf("listing start offsets: %w", err)
	}
	targets := starts
	if !at.IsZero() && len(streams) > 0 {
		if targets, err = c.adm.ListOffsetsAfterMilli(ctx, at.UnixMilli(), streams...); err != nil {
			return rp, fmt.Errorf("listing offsets at %s: %w", rp.Target, err)
		}
	}
	toCommit := kadm.Offsets{}
	add := func(topics []string, lo kadm.ListedOffsets, why string) error {
		for _, t := range topics {
			ps, ok := lo[t]
			if !ok {
				continue // the topic does not exist yet: nothing to rewind
			}
			for p, o := range ps {
				if o.Err != nil {
					return fmt.Errorf("offset of %s/%d: %w", t, p, o.Err)
				}
				from := int64(-1)
				if c, ok := committed.Lookup(t, p); ok {
					from = c.At
				}
				rp.Offsets = append(rp.Offsets, resetOffset{Topic: t, Partition: p, From: from, To: o.Offset, Why: why})
				toCommit.AddOffset(t, p, o.Offset, -1)
			}
		}
		return nil
	}
	streamWhy := "input, to " + rp.Target
	if err := add(streams, targets, streamWhy); err != nil {
		return rp, err
	}
	if err := add(tables, starts, "table input: rebuilt from its earliest record"); err != nil {
		return rp, err
	}
	sort.Slice(rp.Offsets, func(i, j int) bool {
		a, b := rp.Offsets[i], rp.Offsets[j]
		return a.Topic < b.Topic || a.Topic == b.Topic && a.Partition < b.Partition
	})
	existing, err := c.adm.ListTopics(ctx, internal...)
	if err != nil {
		return rp, fmt.Errorf("listing internal topics: %w", err)
	}
	for _, t := range internal {
		if d, ok := existing[t]; ok && d.Err == nil {
			rp.Internal = append(rp.Internal, t)
		}
	}
	if !execute {
		return rp, nil
	}
	return rp, executeReset(ctx, c, &rp, toCommit)
}

func executeReset(ctx context.Context, c *jobCtl, rp *resetPlan, offsets kadm.Offsets) error {
	// Offsets of topics deleted below would be dropped by the broker
	// anyway; delete them first so a restarted worker cannot start from
	// a repartition offset of the old topic.
	if len(rp.Internal) > 0 {
		var internal kadm.TopicsSet = kadm.TopicsSet{}
		for _, t := range rp.Internal {
			internal.Add(t)
		}
		if resp, err := c.adm.DeleteOffsets(ctx, c.group(), internal); err == nil {
			_ = resp.Error() // partitions without an offset are not an error here
		}
		resps, err := c.adm.DeleteTopics(ctx, rp.Internal...)
		if err != nil {
			return fmt.Errorf("deleting internal topics: %w", err)
		}
		if err := resps.Error(); err != nil {
			return fmt.Errorf("deleting internal topics: %w", err)
		}
	}
	resp, err := c.adm.CommitOffsets(ctx, c.group(), offsets)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		return fmt.Errorf("committing the new offsets of %s: %w", c.group(), err)
	}
	rp.Executed = true
	return nil
}
