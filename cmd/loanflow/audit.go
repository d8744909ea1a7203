package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api/audit"
	"github.com/loanflow/loanflow/api/pii"
)

func init() { addCommand(newAuditCmd) }

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Inspect the hash-chained audit log"}
	var dsn, brokers, topic string
	var keys keyFlags
	var unkeyed bool
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Walk the audit chain and name the first broken row: every keyed row's HMAC-SHA-256 with the index keyset (a rewritten row is found even when the chain after it was recomputed); with --anchors-topic, also check it against the signed heads the API anchored (finds a dropped tail)",
		RunE: func(c *cobra.Command, _ []string) error {
			if dsn == "" {
				return errors.New("--database-url (or DATABASE_URL) is required")
			}
			pool, err := pgxpool.New(c.Context(), dsn)
			if err != nil {
				return fmt.Errorf("connecting to PostgreSQL: %w", err)
			}
			defer pool.Close()
			var kr *pii.Keyring
			if !unkeyed || topic != "" {
				if kr, err = pii.Open(c.Context(), keys.config()); err != nil {
					return fmt.Errorf("opening the PII index keyset that keys the chain and signs the anchors (--keys-dir, --kek-uri, --index-keyset; or --unkeyed to check only the chain's linkage): %w", err)
				}
			}
			var rep audit.Report
			anchored := 0
			switch {
			case topic != "":
				var anchors []audit.Anchor
				if anchors, err = readAnchorTopic(c.Context(), splitList(brokers), topic); err != nil {
					return err
				}
				anchored = len(anchors)
				var ck audit.Keys = kr
				if unkeyed {
					ck = nil
				}
				rep, err = audit.VerifyAnchored(c.Context(), pool, anchors, func(a audit.Anchor) bool {
					return kr.VerifyMAC(audit.AnchorDomain, audit.AnchorMessage(a), a.KeyID, a.MAC)
				}, ck)
			case unkeyed:
				rep, err = audit.Verify(c.Context(), pool)
			default:
				rep, err = audit.VerifyKeyed(c.Context(), pool, kr)
			}
			if err != nil {
				return err
			}
			if !rep.OK {
				return fmt.Errorf("audit chain broken at row seq=%d: %s (%d rows checked)", rep.BrokenSeq, rep.Reason, rep.Rows)
			}
			out := c.OutOrStdout()
			fmt.Fprintf(out, "audit chain intact: %d rows (%d keyed", rep.Rows, rep.Keyed)
			if rep.Unauthenticated {
				fmt.Fprint(out, ", their MACs NOT checked: --unkeyed")
			}
			fmt.Fprint(out, ")")
			if topic != "" {
				fmt.Fprintf(out, ", consistent with %d signed anchors\n", anchored)
				return nil
			}
			fmt.Fprintln(out, "; without --anchors-topic a dropped tail cannot be seen")
			return nil
		},
	}
	f := verify.Flags()
	f.StringVar(&dsn, "database-url", os.Getenv("DATABASE_URL"), "PostgreSQL DSN (env DATABASE_URL)")
	f.StringVar(&topic, "anchors-topic", "", "Kafka topic of the API's signed audit heads (the API's --audit-anchors-topic, default audit_anchors)")
	f.StringVar(&brokers, "brokers", envOr("LOANFLOW_BROKERS", "127.0.0.1:9092"), "Kafka seed brokers for --anchors-topic (env LOANFLOW_BROKERS)")
	f.BoolVar(&unkeyed, "unkeyed", false, "check only the chain's linkage and its unkeyed prefix, without the keys (a chain recomputed by the database's owner passes)")
	keys.register(verify)
	cmd.AddCommand(verify)
	return cmd
}

// readAnchorTopic reads every record of topic up to its current end.
func readAnchorTopic(ctx context.Context, brokers []string, topic string) ([]audit.Anchor, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("reading the end of %s: %w", topic, err)
	}
	remaining := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil && o.Offset > 0 {
			remaining[o.Partition] = o.Offset
		}
	})
	var out []audit.Anchor
	for len(remaining) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("reading %s: %w", topic, ctx.Err())
		}
		var bad error
		fs.EachRecord(func(r *kgo.Record) {
			var a audit.Anchor
			if err := json.Unmarshal(r.Value, &a); err != nil {
				bad = fmt.Errorf("%s partition %d offset %d is not an anchor: %w", topic, r.Partition, r.Offset, err)
			}
			out = append(out, a)
			if r.Offset+1 >= remaining[r.Partition] {
				delete(remaining, r.Partition)
			}
		})
		if bad != nil {
			return nil, bad
		}
	}
	return out, nil
}
