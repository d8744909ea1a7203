package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/loanflow/loanflow/state"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// A savepoint is a directory:
//
//	job.json                 the job and its subtopologies' partition counts
//	tasks/<sub>_<part>/
//	    offsets.json         the task's committed input offsets
//	    state/               a Pebble checkpoint of the task's state
//
// Every worker of a stopped job writes its own tasks into the same
// directory. A savepoint holds positions in the job's source and
// repartition topics, so it restores against the same Kafka cluster.

type savepointJob struct {
	Job           string           `json:"job"`
	CreatedAt     time.Time        `json:"created_at"`
	Subtopologies map[int]int32    `json:"subtopologies"`
	Inputs        map[int][]string `json:"inputs"`
}

type savepointTask struct {
	Task    string           `json:"task"`
	Worker  string           `json:"worker"`
	Offsets map[string]int64 `json:"offsets"`
}

// StopWithSavepoint stops Run after a final checkpoint and writes this
// worker's tasks into dir.
func (w *Worker) StopWithSavepoint(ctx context.Context, dir string) error {
	done := make(chan error, 1)
	select {
	case w.stopReq <- stopRequest{savepoint: dir, done: done}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *Worker) writeSavepoint(ctx context.Context, dir string) error {
	job := savepointJob{Job: w.plan.Job, CreatedAt: time.Now().UTC(), Subtopologies: map[int]int32{}, Inputs: map[int][]string{}}
	for _, s := range w.plan.Subtopologies {
		job.Subtopologies[s.ID] = s.Partitions
		for _, in := range s.Inputs {
			job.Inputs[s.ID] = append(job.Inputs[s.ID], in.Topic)
		}
	}
	if err := writeJSON(filepath.Join(dir, "job.json"), job); err != nil {
		return err
	}
	committed := w.sess.Client().CommittedOffsets()
	for id, tr := range w.tasks {
		tdir := filepath.Join(dir, "tasks", id.String())
		if err := os.RemoveAll(tdir); err != nil {
			return err
		}
		if err := os.MkdirAll(tdir, 0o755); err != nil {
			return fmt.Errorf("creating savepoint dir: %w", err)
		}
		reply := make(chan error, 1)
		tr.in <- taskMsg{kind: msgSnapshot, dir: filepath.Join(tdir, "state"), reply: reply}
		if err := <-reply; err != nil {
			return fmt.Errorf("snapshotting task %s: %w", id, err)
		}
		st := savepointTask{Task: id.String(), Worker: w.cfg.WorkerID, Offsets: map[string]int64{}}
		for _, in := range w.plan.Subtopologies[id.sub].Inputs {
			if eo, ok := committed[in.Topic][id.part]; ok {
				st.Offsets[in.Topic] = eo.Offset
			}
		}
		if err := writeJSON(filepath.Join(tdir, "offsets.json"), st); err != nil {
			return err
		}
	}
	w.log.Info("savepoint written", "dir", dir, "tasks", len(w.tasks))
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// restoreSavepoint prepares the cluster to resume the job from a
// savepoint: it checks the savepoint matches the job, rewrites the job's
// changelogs from the saved state, drops this worker's local state (every
// task restores from the rewritten changelogs) and commits the saved
// input offsets to the job's group. The job must be stopped.
func (w *Worker) restoreSavepoint(ctx context.Context, dir string) error {
	var job savepointJob
	if err := readJSON(filepath.Join(dir, "job.json"), &job); err != nil {
		return fmt.Errorf("reading savepoint %s: %w", dir, err)
	}
	if job.Job != w.plan.Job {
		return fmt.Errorf("savepoint %s is of job %q, not %q", dir, job.Job, w.plan.Job)
	}
	for _, s := range w.plan.Subtopologies {
		if job.Subtopologies[s.ID] != s.Partitions {
			return fmt.Errorf("savepoint %s: subtopology %d had %d tasks, the job now has %d; a savepoint restores only the same layout", dir, s.ID, job.Subtopologies[s.ID], s.Partitions)
		}
	}
	if err := w.requireStopped(ctx); err != nil {
		return err
	}
	tasks, err := w.savepointTasks(dir)
	if err != nil {
		return err
	}
	if err := w.recreateChangelogs(ctx); err != nil {
		return err
	}
	prod, err := kgo.NewClient(w.clientOpts(kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		return err
	}
	defer prod.Close()
	offsets := kadm.Offsets{}
	for id, st := range tasks {
		if err := rewriteChangelogs(ctx, prod, filepath.Join(dir, "tasks", id.String(), "state"), id); err != nil {
			return err
		}
		for topic, off := range st.Offsets {
			offsets.AddOffset(topic, id.part, off, -1)
		}
	}
	resp, err := w.adm.CommitOffsets(ctx, Group(w.cfg.JobID), offsets)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		return fmt.Errorf("committing savepoint offsets: %w", err)
	}
	if err := os.RemoveAll(filepath.Join(w.cfg.StateDir, sanitize(w.plan.Job))); err != nil {
		return err
	}
	w.log.Info("resuming from savepoint", "dir", dir, "tasks", len(tasks), "created_at", job.CreatedAt)
	return nil
}

func (w *Worker) requireStopped(ctx context.Context) error {
	groups, err := w.adm.DescribeGroups(ctx, Group(w.cfg.JobID))
	if err != nil {
		return fmt.Errorf("describing group: %w", err)
	}
	if g, ok := groups[Group(w.cfg.JobID)]; ok && len(g.Members) > 0 {
		return fmt.Errorf("job %s still has %d running workers; stop them before starting from a savepoint", w.plan.Job, len(g.Members))
	}
	return nil
}

// savepointTasks reads every task's offsets and checks none is missing.
func (w *Worker) savepointTasks(dir string) (map[taskID]savepointTask, error) {
	out := make(map[taskID]savepointTask)
	var missing []string
	for _, s := range w.plan.Subtopologies {
		for p := int32(0); p < s.Partitions; p++ {
			id := taskID{s.ID, p}
			var st savepointTask
			if err := readJSON(filepath.Join(dir, "tasks", id.String(), "offsets.json"), &st); err != nil {
				missing = append(missing, id.String())
				continue
			}
			out[id] = st
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("savepoint %s lacks tasks %v; were all workers stopped with the savepoint?", dir, missing)
	}
	return out, nil
}

func (w *Worker) recreateChangelogs(ctx context.Context) error {
	var logs []string
	for _, s := range w.plan.Subtopologies {
		logs = append(logs, s.Changelogs...)
	}
	resp, err := w.adm.DeleteTopics(ctx, logs...)
	if err != nil {
		return fmt.Errorf("deleting changelogs: %w", err)
	}
	for _, r := range resp {
		if r.Err != nil && !errors.Is(r.Err, kerr.UnknownTopicOrPartition) {
			return fmt.Errorf("deleting changelog %s: %w", r.Topic, r.Err)
		}
	}
	for _, s := range w.plan.Subtopologies {
		var ts []topicSpec
		for _, cl := range s.Changelogs {
			ts = append(ts, topicSpec{name: cl, partitions: s.Partitions, role: "changelog", configs: map[string]*string{"cleanup.policy": strp("compact")}})
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := createTopics(ctx, w.adm, w.cfg, ts)
			if err == nil || time.Now().After(deadline) {
				if err != nil {
					return err
				}
				break
			}
			time.Sleep(200 * time.Millisecond) // deletion still in progress
		}
	}
	return nil
}

// rewriteChangelogs writes a saved task state into its changelog
// partitions (prod must partition manually).
func rewriteChangelogs(ctx context.Context, prod *kgo.Client, stateDir string, id taskID) error {
	st, err := state.Open(state.Options{Dir: stateDir})
	if err != nil {
		return fmt.Errorf("opening saved state of task %s: %w", id, err)
	}
	defer st.Close()
	var recs []*kgo.Record
	flush := func() error {
		if len(recs) == 0 {
			return nil
		}
		err := prod.ProduceSync(ctx, recs...).FirstErr()
		recs = recs[:0]
		return err
	}
	err = st.ExportLogs(func(log string, key, value []byte) error {
		recs = append(recs, &kgo.Record{Topic: log, Partition: id.part, Key: append([]byte(nil), key...), Value: append([]byte(nil), value...)})
		if len(recs) == 1000 {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("rewriting changelogs of task %s: %w", id, err)
	}
	return nil
}
