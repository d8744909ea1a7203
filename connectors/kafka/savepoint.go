package kafka

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// A savepoint is a directory:
//
//	job.json                 the job, its subtopologies' partition counts,
//	                         its repartition topics' ids
//	tasks/<sub>_<part>/
//	    offsets.json         the task's committed input offsets, the end
//	                         offsets of the repartition topics it writes,
//	                         and how far its in-flight copy goes
//	    inflight/<topic>     the repartition records it had not yet read
//	    state/               a Pebble checkpoint of the task's state
//
// Every worker of a stopped job writes its own tasks into the same
// directory. A savepoint holds positions in the job's source topics, so it
// restores against the same Kafka cluster. Repartition topics are not
// trusted: they may hold records written after the savepoint (restoring an
// older savepoint would count them twice), so a restore recreates them
// holding exactly the records in flight at the savepoint: for each
// partition, from its reader's committed offset up to the highest end
// offset any writer task recorded when it stopped (a writer stopped later
// than the reader wrote records the reader's copy lacks; they are read
// from the live topic when it is still the same topic). The writers' idle
// markers among them are not restored (idleMarker).

type savepointJob struct {
	Job           string           `json:"job"`
	CreatedAt     time.Time        `json:"created_at"`
	Subtopologies map[int]int32    `json:"subtopologies"`
	Inputs        map[int][]string `json:"inputs"`
	// Repartitions are the job's repartition topics and their topic ids.
	Repartitions map[string]string `json:"repartitions"`
}

type savepointTask struct {
	Task    string           `json:"task"`
	Worker  string           `json:"worker"`
	Offsets map[string]int64 `json:"offsets"`
	// Writes are the end offsets of the repartition topics the task
	// writes, per partition, after its final checkpoint.
	Writes map[string]map[int32]int64 `json:"writes"`
	// InFlight is, per repartition input, the end of the copied records:
	// inflight/<topic> holds [Offsets[topic], InFlight[topic]).
	InFlight map[string]int64 `json:"in_flight"`
}

// savedRecord is a repartition record kept in a savepoint.
type savedRecord struct {
	Offset    int64       `json:"o"`
	Key       []byte      `json:"k,omitempty"`
	Value     []byte      `json:"v,omitempty"`
	Timestamp int64       `json:"t"`
	Headers   [][2][]byte `json:"h,omitempty"`
}

// StopWithSavepoint stops Run after a final checkpoint and writes this
// worker's tasks into dir.
func (w *Worker) StopWithSavepoint(ctx context.Context, dir string) error {
	return w.request(ctx, stopRequest{savepoint: dir})
}

// Savepoint takes a checkpoint and writes this worker's tasks into dir
// without stopping. A savepoint of a job whose workers write one another
// repartition records is only consistent when every worker writes it at
// the same checkpoint: `loanflow job savepoint` refuses such a job with
// more than one worker (stop it with a savepoint instead).
func (w *Worker) Savepoint(ctx context.Context, dir string) error {
	if dir == "" {
		return errors.New("kafka: a savepoint needs a directory")
	}
	return w.request(ctx, stopRequest{savepoint: dir, keepRunning: true})
}

// StopRequested reports whether a stop was requested through
// StopWithSavepoint (the admin endpoint's POST /stop), whatever its outcome.
func (w *Worker) StopRequested() bool { return w.stopAsked.Load() }

// request hands req to Run and waits for its outcome.
func (w *Worker) request(ctx context.Context, req stopRequest) error {
	done := make(chan error, 1)
	req.done = done
	select {
	case w.stopReq <- req:
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
	job := savepointJob{Job: w.plan.Job, CreatedAt: time.Now().UTC(), Subtopologies: map[int]int32{}, Inputs: map[int][]string{},
		Repartitions: map[string]string{}}
	reps := w.repartitionTopics()
	for _, s := range w.plan.Subtopologies {
		job.Subtopologies[s.ID] = s.Partitions
		for _, in := range s.Inputs {
			job.Inputs[s.ID] = append(job.Inputs[s.ID], in.Topic)
		}
	}
	ids, err := w.topicIdentities(ctx, reps)
	if err != nil {
		return err
	}
	for t, id := range ids {
		job.Repartitions[t] = fmt.Sprintf("%x", id)
	}
	if err := writeJSON(filepath.Join(dir, "job.json"), job); err != nil {
		return err
	}
	if err := w.awaitStableWrites(ctx, reps); err != nil {
		return err
	}
	var ends, starts kadm.ListedOffsets
	if len(reps) > 0 {
		if ends, err = w.adm.ListCommittedOffsets(ctx, reps...); err == nil {
			starts, err = w.adm.ListStartOffsets(ctx, reps...)
		}
		if err != nil {
			return fmt.Errorf("listing repartition offsets: %w", err)
		}
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
		sub := w.plan.Subtopologies[id.sub]
		st := savepointTask{Task: id.String(), Worker: w.cfg.WorkerID, Offsets: map[string]int64{},
			Writes: map[string]map[int32]int64{}, InFlight: map[string]int64{}}
		for _, out := range sub.Outputs {
			if !slices.Contains(reps, out) {
				continue
			}
			st.Writes[out] = map[int32]int64{}
			ends.Each(func(o kadm.ListedOffset) {
				if o.Topic == out && o.Err == nil {
					st.Writes[out][o.Partition] = o.Offset
				}
			})
		}
		for _, in := range sub.Inputs {
			eo, ok := committed[in.Topic][id.part]
			if ok {
				st.Offsets[in.Topic] = eo.Offset
			}
			if !in.Repartition {
				continue
			}
			from := eo.Offset
			if !ok {
				s, _ := starts.Lookup(in.Topic, id.part)
				from = s.Offset
				st.Offsets[in.Topic] = from
			}
			end, _ := ends.Lookup(in.Topic, id.part)
			if err := w.copyInFlight(ctx, filepath.Join(tdir, "inflight", in.Topic), in.Topic, id.part, from, end.Offset); err != nil {
				return err
			}
			st.InFlight[in.Topic] = max(end.Offset, from)
		}
		if err := writeJSON(filepath.Join(tdir, "offsets.json"), st); err != nil {
			return err
		}
	}
	w.log.Info("savepoint written", "dir", dir, "tasks", len(w.tasks))
	return nil
}

// awaitStableWrites waits until every repartition record this worker
// wrote in a committed checkpoint is below its partition's last stable
// offset. Apache Kafka answers EndTxn once the commit is prepared and
// writes the commit markers after: listed right after the final
// checkpoint, a last stable offset may stop short of that checkpoint's
// records, and the in-flight copy (and the writers' recorded ends) would
// leave them out of the savepoint (the same lag made a test read the
// outputs of a stopped job without its last transaction's records).
func (w *Worker) awaitStableWrites(ctx context.Context, reps []string) error {
	if len(reps) == 0 || len(w.committedWrites) == 0 {
		return nil
	}
	start := time.Now()
	deadline := start.Add(w.cfg.TransactionTimeout + 30*time.Second)
	for {
		lsos, err := w.adm.ListCommittedOffsets(ctx, reps...)
		if err != nil {
			return fmt.Errorf("listing repartition offsets: %w", err)
		}
		var behind []string
		for t, parts := range w.committedWrites {
			for p, next := range parts {
				if l, ok := lsos.Lookup(t, p); !ok || l.Err != nil || l.Offset < next {
					behind = append(behind, fmt.Sprintf("%s/%d", t, p))
				}
			}
		}
		if len(behind) == 0 {
			if d := time.Since(start); d > 100*time.Millisecond {
				w.log.Info("savepoint waited for its last checkpoint's repartition records to be stable", "took", d.Round(time.Millisecond))
			}
			return nil
		}
		if time.Now().After(deadline) {
			sort.Strings(behind)
			return fmt.Errorf("savepoint: the last checkpoint's records in %v are not readable (read_committed) %s after it committed", behind, time.Since(start).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// repartitionTopics lists the job's repartition topics.
func (w *Worker) repartitionTopics() []string {
	var out []string
	for _, s := range w.plan.Subtopologies {
		for _, in := range s.Inputs {
			if in.Repartition && !slices.Contains(out, in.Topic) {
				out = append(out, in.Topic)
			}
		}
	}
	sort.Strings(out)
	return out
}

// copyInFlight saves the committed records of [from, to) of a partition
// to path, one JSON record per line.
func (w *Worker) copyInFlight(ctx context.Context, path, topic string, p int32, from, to int64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriter(f)
	enc := json.NewEncoder(bw)
	if from < to {
		err = w.consumeRange(ctx, topic, p, from, to, func(r *kgo.Record) error {
			if r.Attrs.IsControl() {
				return nil
			}
			return enc.Encode(toSaved(r))
		})
		if err != nil {
			return fmt.Errorf("copying in-flight records of %s/%d: %w", topic, p, err)
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return f.Sync()
}

func toSaved(r *kgo.Record) savedRecord {
	sr := savedRecord{Offset: r.Offset, Key: r.Key, Value: r.Value, Timestamp: r.Timestamp.UnixMilli()}
	for _, h := range r.Headers {
		sr.Headers = append(sr.Headers, [2][]byte{[]byte(h.Key), h.Value})
	}
	return sr
}

func readSaved(path string) ([]savedRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []savedRecord
	dec := json.NewDecoder(bufio.NewReader(f))
	for {
		var sr savedRecord
		if err := dec.Decode(&sr); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("reading %s: %w", path, err)
		}
		out = append(out, sr)
	}
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
	inflight, err := w.savedInFlight(ctx, dir, job, tasks)
	if err != nil {
		return err
	}
	if err := w.recreateChangelogs(ctx); err != nil {
		return err
	}
	// The topics it writes were just recreated: a partition's leader may
	// answer UNKNOWN_TOPIC_OR_PARTITION for a while (seen on a loaded
	// Apache broker: the restore failed after franz-go's default 4 tries),
	// so records wait for the topic instead, each write for as long as
	// retryUnknownTopic would (produceRestored; not RecordDeliveryTimeout,
	// which counts from the records' timestamps: the saved ones are old).
	prod, err := kgo.NewClient(w.clientOpts(kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.UnknownTopicRetries(-1))...)
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
			if _, ok := inflight[topic]; ok {
				off = 0 // recreated, holding what was in flight
			}
			offsets.AddOffset(topic, id.part, off, -1)
		}
	}
	if err := w.rewriteRepartitions(ctx, prod, inflight); err != nil {
		return err
	}
	// The recreated topics may not be in the group coordinator's
	// metadata yet (Apache Kafka answers UNKNOWN_TOPIC_OR_PARTITION for a
	// moment after a topic is recreated, though records were written).
	err = retryUnknownTopic(ctx, func() error {
		resp, err := w.adm.CommitOffsets(ctx, Group(w.cfg.JobID), offsets)
		if err == nil {
			err = resp.Error()
		}
		return err
	})
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

// savedInFlight gathers, per repartition topic and partition, the records
// in flight at the savepoint: the reader's copy, cut at the highest end
// offset a writer recorded, completed from the live topic when a writer
// stopped after the reader did.
func (w *Worker) savedInFlight(ctx context.Context, dir string, job savepointJob, tasks map[taskID]savepointTask) (map[string]map[int32][]savedRecord, error) {
	out := map[string]map[int32][]savedRecord{}
	for _, s := range w.plan.Subtopologies {
		for _, in := range s.Inputs {
			if !in.Repartition {
				continue
			}
			out[in.Topic] = map[int32][]savedRecord{}
			for p := int32(0); p < s.Partitions; p++ {
				id := taskID{s.ID, p}
				st := tasks[id]
				copyEnd, ok := st.InFlight[in.Topic]
				if !ok {
					return nil, fmt.Errorf("savepoint %s: task %s has no copy of its in-flight %s records (written by an older version?); it cannot be restored", dir, id, in.Topic)
				}
				end := copyEnd
				for _, other := range tasks {
					if e, ok := other.Writes[in.Topic][p]; ok && e > end {
						end = e
					}
				}
				recs, err := readSaved(filepath.Join(dir, "tasks", id.String(), "inflight", in.Topic))
				if err != nil {
					return nil, err
				}
				for len(recs) > 0 && recs[len(recs)-1].Offset >= end {
					recs = recs[:len(recs)-1]
				}
				if end > copyEnd {
					tail, err := w.liveTail(ctx, job, in.Topic, p, copyEnd, end)
					if err != nil {
						return nil, fmt.Errorf("savepoint %s: %w", dir, err)
					}
					recs = append(recs, tail...)
				}
				out[in.Topic][p] = recs
			}
		}
	}
	return out, nil
}

// liveTail reads [from, to) of a repartition partition from the cluster,
// if it is still the topic the savepoint knew and still holds them.
func (w *Worker) liveTail(ctx context.Context, job savepointJob, topic string, p int32, from, to int64) ([]savedRecord, error) {
	ids, err := w.topicIdentities(ctx, []string{topic})
	if err != nil {
		return nil, err
	}
	id := ids[topic]
	if fmt.Sprintf("%x", id) != job.Repartitions[topic] {
		return nil, fmt.Errorf("records [%d,%d) of %s/%d were written after its reader saved and the topic has been recreated since: stop every worker of the job together with the savepoint", from, to, topic, p)
	}
	starts, err := w.adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	if s, _ := starts.Lookup(topic, p); s.Offset > from {
		return nil, fmt.Errorf("records [%d,%d) of %s/%d were written after its reader saved and have been deleted since: stop every worker of the job together with the savepoint", from, to, topic, p)
	}
	var out []savedRecord
	err = w.consumeRange(ctx, topic, p, from, to, func(r *kgo.Record) error {
		if !r.Attrs.IsControl() {
			out = append(out, toSaved(r))
		}
		return nil
	})
	return out, err
}

// rewriteRepartitions recreates the repartition topics holding only the
// records in flight at the savepoint.
func (w *Worker) rewriteRepartitions(ctx context.Context, prod *kgo.Client, inflight map[string]map[int32][]savedRecord) error {
	var topics []string
	for t := range inflight {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	var specs []topicSpec
	for _, s := range w.plan.Subtopologies {
		for _, in := range s.Inputs {
			if in.Repartition {
				specs = append(specs, topicSpec{name: in.Topic, partitions: s.Partitions, role: "repartition",
					configs: map[string]*string{"retention.ms": strp("-1")}})
			}
		}
	}
	if err := w.recreateTopics(ctx, topics, specs); err != nil {
		return err
	}
	n, idle := 0, 0
	for _, t := range topics {
		for p, recs := range inflight[t] {
			var batch []*kgo.Record
			for _, sr := range recs {
				if idleMarker(sr) {
					idle++
					continue
				}
				r := &kgo.Record{Topic: t, Partition: p, Key: sr.Key, Value: sr.Value, Timestamp: time.UnixMilli(sr.Timestamp)}
				for _, h := range sr.Headers {
					r.Headers = append(r.Headers, kgo.RecordHeader{Key: string(h[0]), Value: h[1]})
				}
				batch = append(batch, r)
			}
			if len(batch) > 0 {
				if err := produceRestored(ctx, prod, batch); err != nil {
					return fmt.Errorf("rewriting in-flight records of %s/%d: %w", t, p, err)
				}
			}
			n += len(batch)
		}
	}
	w.log.Info("repartition topics recreated with the savepoint's in-flight records", "topics", len(topics), "records", n, "idle_markers_dropped", idle)
	return nil
}

// idleMarker reports whether a saved record is a watermark marker saying
// its writer was idle. Restoring one would tell the readers that a writer
// of the previous run, caught up with the input of then, is idle; the
// restored writer starts active and says so only once it runs: until
// then the readers would leave it out of their watermark, let the other
// writers carry it past the records it has yet to write, and drop those
// as late (pipeline.IdleMarker).
func idleMarker(sr savedRecord) bool {
	for _, h := range sr.Headers {
		if string(h[0]) == pipeline.HeaderWatermark && pipeline.IdleMarker(h[1]) {
			return true
		}
	}
	return false
}

func (w *Worker) recreateChangelogs(ctx context.Context) error {
	var logs []string
	var specs []topicSpec
	for _, s := range w.plan.Subtopologies {
		logs = append(logs, s.Changelogs...)
		for _, cl := range s.Changelogs {
			specs = append(specs, topicSpec{name: cl, partitions: s.Partitions, role: "changelog", configs: map[string]*string{"cleanup.policy": strp("compact")}})
		}
	}
	return w.recreateTopics(ctx, logs, specs)
}

// recreateTopics deletes topics and creates them again from specs.
func (w *Worker) recreateTopics(ctx context.Context, topics []string, specs []topicSpec) error {
	if len(topics) == 0 {
		return nil
	}
	resp, err := w.adm.DeleteTopics(ctx, topics...)
	if err != nil {
		return fmt.Errorf("deleting changelogs: %w", err)
	}
	for _, r := range resp {
		if r.Err != nil && !errors.Is(r.Err, kerr.UnknownTopicOrPartition) {
			return fmt.Errorf("deleting %s: %w", r.Topic, r.Err)
		}
	}
	// A broker may still answer "already exists" for a topic being
	// deleted: wait until none is left before creating them again.
	deadline := time.Now().Add(60 * time.Second)
	for {
		td, err := w.adm.ListTopics(ctx, topics...)
		if err == nil {
			left := 0
			for _, d := range td {
				if d.Err == nil {
					left++
				}
			}
			if left == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("topics %v still exist 60s after their deletion", topics)
		}
		time.Sleep(200 * time.Millisecond)
	}
	specs = dedupe(specs)
	got := make(map[string]int32, len(specs))
	if err := createTopics(ctx, w.adm, w.cfg, specs, got); err != nil {
		return err
	}
	for _, t := range specs {
		if got[t.name] != t.partitions {
			return fmt.Errorf("%s topic %q was created again with %d partitions, the job needs %d", t.role, t.name, got[t.name], t.partitions)
		}
	}
	return nil
}

// produceRestored writes records of a savepoint restore into topics just
// recreated, giving up after unknownTopicPatience.
func produceRestored(ctx context.Context, prod *kgo.Client, recs []*kgo.Record) error {
	ctx, cancel := context.WithTimeout(ctx, unknownTopicPatience)
	defer cancel()
	return prod.ProduceSync(ctx, recs...).FirstErr()
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
		err := produceRestored(ctx, prod, recs)
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
