package kafka

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// WorkerStatus is what a worker's admin endpoint reports at GET /status.
type WorkerStatus struct {
	Job            string    `json:"job"`
	Worker         string    `json:"worker"`
	Ready          bool      `json:"ready"`
	Tasks          []string  `json:"tasks"`
	Checkpoints    int64     `json:"checkpoints"`
	LastCheckpoint time.Time `json:"last_checkpoint"`
}

// Status reports the worker's tasks and checkpoints.
func (w *Worker) Status() WorkerStatus {
	ready := false
	select {
	case <-w.Ready():
		ready = true
	default:
	}
	return WorkerStatus{Job: w.plan.Job, Worker: w.ID(), Ready: ready, Tasks: w.Tasks(),
		Checkpoints: w.Checkpoints(), LastCheckpoint: w.LastCheckpoint()}
}

// AdminHandler serves a worker's admin endpoint: GET /metrics (from g),
// /healthz, /readyz (503 until the worker owns and restored its tasks),
// /status (WorkerStatus as JSON) and POST /stop[?savepoint=DIR] (a final
// checkpoint, optionally a savepoint, then leaving the group). `loanflow job
// status` and `loanflow job stop` talk to it.
func AdminHandler(w *Worker, g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
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
		dir := r.URL.Query().Get("savepoint")
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
		defer cancel()
		if err := w.StopWithSavepoint(ctx, dir); err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(rw, "stopped")
	})
	return mux
}
