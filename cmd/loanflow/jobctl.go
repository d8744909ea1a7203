package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/jobs"
)

// staleCheckpoint is the checkpoint age above which `job status` calls a
// worker unhealthy.
const staleCheckpoint = time.Minute

// jobWorker is one worker of a job as the group and its admin endpoint
// describe it.
type jobWorker struct {
	Worker     string              `json:"worker"`
	Admin      string              `json:"admin,omitempty"`
	Host       string              `json:"host"`
	Partitions int                 `json:"partitions"`
	Status     *kafka.WorkerStatus `json:"status,omitempty"`
	Health     string              `json:"health"`
}

// partitionLag is one input partition's position, net of transaction
// markers.
type partitionLag = kafka.PartitionLag

// jobState is what `job status NAME` reports.
type jobState struct {
	Job        string         `json:"job"`
	Group      string         `json:"group"`
	State      string         `json:"state"`
	Workers    []jobWorker    `json:"workers"`
	Partitions []partitionLag `json:"partitions"`
	TotalLag   int64          `json:"total_lag"`
	Healthy    bool           `json:"healthy"`
}

// jobCtl talks to a job's consumer group and workers.
type jobCtl struct {
	job string
	cl  *kgo.Client
	adm *kadm.Client
	hc  *http.Client
}

func newJobCtl(job string, brokers []string) (*jobCtl, error) {
	if _, ok := jobs.Get(job); !ok {
		var names []string
		for _, j := range jobs.List() {
			names = append(names, j.Name)
		}
		return nil, fmt.Errorf("unknown job %q: the jobs are %s (loanflow job list)", job, strings.Join(names, ", "))
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, err
	}
	return &jobCtl{job: job, cl: cl, adm: kadm.NewClient(cl), hc: &http.Client{Timeout: 3 * time.Minute}}, nil
}

func (c *jobCtl) close() { c.cl.Close() }

func (c *jobCtl) group() string { return kafka.Group(c.job) }

// errNeverRan says a job has no consumer group on these brokers.
var errNeverRan = errors.New("job never ran")

// describe returns the group's state and members; errNeverRan when the
// brokers know no such group.
func (c *jobCtl) describe(ctx context.Context) (kadm.DescribedGroup, error) {
	gs, err := c.adm.DescribeGroups(ctx, c.group())
	if err != nil {
		return kadm.DescribedGroup{}, fmt.Errorf("describing group %s: %w", c.group(), err)
	}
	g, ok := gs[c.group()]
	if !ok || errors.Is(g.Err, kerr.GroupIDNotFound) || (g.Err == nil && g.State == "Dead") {
		return g, fmt.Errorf("%w: job %s has no consumer group %s on these brokers: start it with `loanflow job run %s`",
			errNeverRan, c.job, c.group(), c.job)
	}
	if g.Err != nil {
		return g, fmt.Errorf("describing group %s: %w", c.group(), g.Err)
	}
	return g, nil
}

// workers lists the group's members with their advertised admin address.
func (c *jobCtl) workers(g kadm.DescribedGroup) []jobWorker {
	var out []jobWorker
	for _, m := range g.Members {
		w := jobWorker{Worker: m.ClientID, Host: m.ClientHost}
		if m.InstanceID != nil {
			w.Worker = *m.InstanceID
		}
		w.Admin, _ = kafka.MemberAdminAddr(m.ClientID)
		if a, ok := m.Assigned.AsConsumer(); ok {
			for _, t := range a.Topics {
				w.Partitions += len(t.Partitions)
			}
		}
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Worker < out[j].Worker })
	return out
}

// workerStatus asks a worker's admin endpoint for its status.
func (c *jobCtl) workerStatus(ctx context.Context, admin string) (kafka.WorkerStatus, error) {
	var st kafka.WorkerStatus
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return st, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// health fills w.Status and w.Health from the worker's admin endpoint.
func (c *jobCtl) health(ctx context.Context, w *jobWorker) {
	if w.Admin == "" {
		w.Health = "unknown: the worker advertises no admin address (started without --admin-addr)"
		return
	}
	st, err := c.workerStatus(ctx, w.Admin)
	if err != nil {
		w.Health = "unreachable: " + err.Error()
		return
	}
	w.Status = &st
	var problems []string
	if st.Job != c.job {
		problems = append(problems, fmt.Sprintf("its admin address answers for job %s", st.Job))
	}
	if !st.Ready {
		problems = append(problems, "not ready (joining the group or restoring state)")
	}
	if age := time.Since(st.LastCheckpoint); st.LastCheckpoint.IsZero() && st.Ready {
		problems = append(problems, "no checkpoint yet")
	} else if !st.LastCheckpoint.IsZero() && age > staleCheckpoint {
		problems = append(problems, "last checkpoint "+age.Round(time.Second).String()+" ago")
	}
	for task, e := range st.TaskErrors {
		problems = append(problems, "task "+task+" failed: "+e)
	}
	sort.Strings(problems)
	w.Health = "ok"
	if len(problems) > 0 {
		w.Health = strings.Join(problems, "; ")
	}
}

// state gathers the job's workers, health and lag.
func (c *jobCtl) state(ctx context.Context) (jobState, error) {
	g, err := c.describe(ctx)
	if err != nil {
		return jobState{}, err
	}
	st := jobState{Job: c.job, Group: c.group(), State: g.State, Workers: c.workers(g), Healthy: true}
	for i := range st.Workers {
		c.health(ctx, &st.Workers[i])
		if st.Workers[i].Health != "ok" {
			st.Healthy = false
		}
	}
	if len(st.Workers) == 0 {
		st.Healthy = false
	}
	if st.Partitions, err = c.lags(ctx); err != nil {
		return st, err
	}
	for _, p := range st.Partitions {
		st.TotalLag += p.Lag
	}
	return st, nil
}

// lags lists the lag of every partition the group consumes or committed.
func (c *jobCtl) lags(ctx context.Context) ([]partitionLag, error) {
	return kafka.GroupLag(ctx, c.cl, c.group(), kafka.MaxLagScan)
}

// post sends a stop or savepoint request to a worker.
func (c *jobCtl) post(ctx context.Context, admin, path string, q url.Values) (kafka.AdminResult, error) {
	var res kafka.AdminResult
	q.Set("job", c.job)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+admin+path+"?"+q.Encode(), nil)
	if err != nil {
		return res, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return res, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return res, fmt.Errorf("reading the answer %q: %w", body, err)
	}
	return res, nil
}

// targets are the workers a stop or savepoint addresses: the group's
// members, or the --admin addresses given (each checked to run the job).
func (c *jobCtl) targets(ctx context.Context, admins []string) ([]jobWorker, error) {
	if len(admins) > 0 {
		var out []jobWorker
		for _, a := range admins {
			st, err := c.workerStatus(ctx, a)
			if err != nil {
				return nil, fmt.Errorf("worker at %s: %w", a, err)
			}
			if st.Job != c.job {
				return nil, fmt.Errorf("the worker at %s (%s) runs job %s, not %s: refusing to touch it", a, st.Worker, st.Job, c.job)
			}
			out = append(out, jobWorker{Worker: st.Worker, Admin: a, Partitions: len(st.Tasks)})
		}
		return out, nil
	}
	g, err := c.describe(ctx)
	if err != nil {
		return nil, err
	}
	ws := c.workers(g)
	if len(ws) == 0 {
		return nil, fmt.Errorf("job %s has no running worker (group %s is %s)", c.job, c.group(), g.State)
	}
	var missing []string
	for _, w := range ws {
		if w.Admin == "" {
			missing = append(missing, w.Worker)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("workers %s advertise no admin address (started without --admin-addr): give their addresses with --admin",
			strings.Join(missing, ", "))
	}
	return ws, nil
}
