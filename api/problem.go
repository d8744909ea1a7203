package api

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// problem is an RFC 9457 problem details object.
type problem struct {
	Type     string         `json:"type"`
	Title    string         `json:"title"`
	Status   int            `json:"status"`
	Detail   string         `json:"detail,omitempty"`
	Instance string         `json:"instance,omitempty"`
	Extra    map[string]any `json:"-"`
}

const problemBase = "https://loanflow.dev/problems/"

// writeProblem writes a problem+json response. kind is the type slug.
func writeProblem(w http.ResponseWriter, r *http.Request, status int, kind, detail string, extra ...any) {
	p := map[string]any{
		"type":   problemBase + kind,
		"title":  http.StatusText(status),
		"status": status,
	}
	if detail != "" {
		p["detail"] = detail
	}
	if r != nil {
		p["instance"] = r.URL.Path
		if id := requestID(r.Context()); id != "" {
			p["request_id"] = id
		}
	}
	for i := 0; i+1 < len(extra); i += 2 {
		if k, ok := extra[i].(string); ok {
			p[k] = extra[i+1]
		}
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func etag(version int64) string { return `"` + strconv.FormatInt(version, 10) + `"` }
