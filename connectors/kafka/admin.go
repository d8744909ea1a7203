package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/loanflow/loanflow/internal/debughttp"
)

// WorkerStatus is what a worker's admin endpoint reports at GET /status.
type WorkerStatus struct {
	Job            string    `json:"job"`
	Worker         string    `json:"worker"`
	Admin          string    `json:"admin,omitempty"`
	Delivery       Delivery  `json:"delivery"`
	Ready          bool      `json:"ready"`
	Tasks          []string  `json:"tasks"`
	Checkpoints    int64     `json:"checkpoints"`
	LastCheckpoint time.Time `json:"last_checkpoint"`
	// TaskErrors are the tasks that failed since the last committed
	// checkpoint (they restart from it), with their error.
	TaskErrors map[string]string `json:"task_errors,omitempty"`
}

// Status reports the worker's tasks and checkpoints.
func (w *Worker) Status() WorkerStatus {
	ready := false
	select {
	case <-w.Ready():
		ready = true
	default:
	}
	st := WorkerStatus{Job: w.plan.Job, Worker: w.ID(), Admin: w.cfg.AdminAddr, Delivery: w.cfg.Delivery, Ready: ready,
		Tasks: w.Tasks(), Checkpoints: w.Checkpoints(), LastCheckpoint: w.LastCheckpoint()}
	w.mu.Lock()
	for id, err := range w.lastErr {
		if err != nil {
			if st.TaskErrors == nil {
				st.TaskErrors = map[string]string{}
			}
			st.TaskErrors[id.String()] = err.Error()
		}
	}
	w.mu.Unlock()
	return st
}

// RepartitionTopics lists the job's repartition topics: a job with any
// needs every worker at the same checkpoint for a consistent savepoint.
func (w *Worker) RepartitionTopics() []string { return w.repartitionTopics() }

// AdminHandler serves a worker's admin endpoint: GET /metrics (from g),
// /healthz, /readyz (503 until the worker owns and restored its tasks),
// /status (WorkerStatus as JSON), POST /stop[?savepoint=DIR] (a final
// checkpoint, optionally a savepoint, then leaving the group), POST
// /savepoint?dir=DIR (a savepoint without stopping) and /debug/pprof/.
// A request with ?job=NAME for another job than the worker's is refused
// (409), so a stale address cannot stop the wrong job. Savepoint
// directories must be absolute: a relative one would resolve against the
// worker's working directory, not the requester's. `loanflow job status`,
// `stop` and `savepoint` talk to it.
func AdminHandler(w *Worker, g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	debughttp.Register(mux)
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) { fmt.Fprintln(rw, "ok") })
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, _ *http.Request) {
		if !w.Status().Ready {
			http.Error(rw, "not ready: joining the group or restoring state", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(rw, "ready")
	})
	mux.HandleFunc("GET /status", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(w.Status())
	})
	mux.HandleFunc("POST /stop", func(rw http.ResponseWriter, r *http.Request) {
		dir, ok := adminRequest(rw, r, w, "savepoint", false)
		if !ok {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
		defer cancel()
		tasks := w.Tasks() // before the stop: teardown closes them
		if err := w.StopWithSavepoint(ctx, dir); err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		writeResult(rw, "stopped", w, tasks)
	})
	mux.HandleFunc("POST /savepoint", func(rw http.ResponseWriter, r *http.Request) {
		dir, ok := adminRequest(rw, r, w, "dir", true)
		if !ok {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
		defer cancel()
		if err := w.Savepoint(ctx, dir); err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, context.DeadlineExceeded) {
				code = http.StatusServiceUnavailable
			}
			http.Error(rw, err.Error(), code)
			return
		}
		writeResult(rw, "savepoint written", w, w.Tasks())
	})
	return mux
}

// adminRequest checks a stop or savepoint request: the job it names and
// the directory in param (required when need).
func adminRequest(rw http.ResponseWriter, r *http.Request, w *Worker, param string, need bool) (string, bool) {
	q := r.URL.Query()
	if job := q.Get("job"); job != "" && job != w.plan.Job {
		http.Error(rw, fmt.Sprintf("this worker (%s) runs job %s, not %s", w.ID(), w.plan.Job, job), http.StatusConflict)
		return "", false
	}
	dir := q.Get(param)
	if dir == "" && need {
		http.Error(rw, param+" is required: the savepoint directory", http.StatusBadRequest)
		return "", false
	}
	if dir != "" && !filepath.IsAbs(dir) {
		http.Error(rw, fmt.Sprintf("savepoint directory %q is relative: give an absolute path (the worker's working directory is not yours)", dir), http.StatusBadRequest)
		return "", false
	}
	return dir, true
}

// AdminResult is the answer to POST /stop and /savepoint.
type AdminResult struct {
	Result string   `json:"result"`
	Job    string   `json:"job"`
	Worker string   `json:"worker"`
	Tasks  []string `json:"tasks"`
}

func writeResult(rw http.ResponseWriter, what string, w *Worker, tasks []string) {
	sort.Strings(tasks)
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(AdminResult{Result: what, Job: w.plan.Job, Worker: w.ID(), Tasks: tasks})
}
