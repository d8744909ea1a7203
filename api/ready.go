package api

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kadm"
)

// pipelineReady reports whether the pipeline behind the API can do its
// job: the topics the API writes and reads exist, and every consumer
// group in Config.ReadyGroups (the decisions job's) has a member that
// owns partitions. Once true it stays true (a later outage shows in the
// live checks of /readyz, not here); until then it says what is missing.
type pipelineReady struct {
	done atomic.Bool
}

func (s *Server) pipelineReady(ctx context.Context) (bool, string) {
	if s.ready.done.Load() {
		return true, "ok"
	}
	adm := kadm.NewClient(s.producer)
	topics := []string{s.cfg.ApplicationsTopic, s.cfg.DecisionsTopic}
	td, err := adm.ListTopics(ctx, topics...)
	if err != nil {
		return false, "checking topics: " + err.Error()
	}
	var missing []string
	for _, t := range topics {
		if d, ok := td[t]; !ok || d.Err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return false, "waiting for topics " + strings.Join(missing, ", ")
	}
	if len(s.cfg.ReadyGroups) > 0 {
		gs, err := adm.DescribeGroups(ctx, s.cfg.ReadyGroups...)
		if err != nil {
			return false, "checking consumer groups: " + err.Error()
		}
		for _, g := range s.cfg.ReadyGroups {
			if !assigned(gs[g]) {
				return false, fmt.Sprintf("waiting for consumer group %s to own its partitions (is the job running?)", g)
			}
		}
	}
	s.ready.done.Store(true)
	return true, "ok"
}

// assigned reports whether a group is stable with a member owning
// partitions.
func assigned(g kadm.DescribedGroup) bool {
	if g.Err != nil || g.State != "Stable" {
		return false
	}
	for _, m := range g.Members {
		if a, ok := m.Assigned.AsConsumer(); ok && len(a.Topics) > 0 {
			return true
		}
	}
	return false
}
