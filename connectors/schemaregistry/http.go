package schemaregistry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// ContentType is the media type of every response, as Confluent's.
const ContentType = "application/vnd.schemaregistry.v1+json"

// Confluent's error codes (HTTP status = code / 100 for the 5-digit ones).
const (
	codeSubjectNotFound          = 40401
	codeVersionNotFound          = 40402
	codeSchemaNotFound           = 40403
	codeSubjectSoftDeleted       = 40404
	codeSubjectNotSoftDeleted    = 40405
	codeVersionSoftDeleted       = 40406
	codeVersionNotSoftDeleted    = 40407
	codeSubjectCompatNotSet      = 40408
	codeSubjectModeNotSet        = 40409
	codeIncompatible             = 409
	codeInvalidSchema            = 42201
	codeInvalidVersion           = 42202
	codeInvalidCompatLevel       = 42203
	codeInvalidMode              = 42204
	codeOperationNotPermitted    = 42205
	codeIDDoesNotMatch           = 42207
	codeSchemaTooLarge           = 42209
	codeStoreError               = 50001
	codeOperationTimeout         = 50002
	codeUnknownLeader            = 50004
	codeBadRequest               = 400
	codeNotFound                 = 404
	codeMethodNotAllowed         = 405
	modeReadWrite, modeReadOnly  = "READWRITE", "READONLY"
	modeReadOnlyOverride, modeIm = "READONLY_OVERRIDE", "IMPORT"
)

// apiError is an error response: {"error_code": code, "message": msg}.
type apiError struct {
	code int
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func errf(code int, format string, args ...any) *apiError {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

func (e *apiError) status() int {
	if e.code >= 10000 {
		return e.code / 100
	}
	return e.code
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", ContentType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = errf(codeStoreError, "Error in the backend data store: %v", err)
	}
	writeJSON(w, ae.status(), map[string]any{"error_code": ae.code, "message": ae.msg})
}

// handler adapts a handler returning (body, error) to net/http.
func handler(fn func(*http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		v, err := fn(req)
		if err != nil {
			writeErr(w, err)
			return
		}
		if raw, ok := v.(rawJSON); ok {
			w.Header().Set("Content-Type", ContentType)
			_, _ = w.Write(raw)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// rawJSON is a response body written as is (a schema's own text).
type rawJSON []byte

// Handler returns the registry's HTTP API. Run serves it; it is exported
// for mounting under another server.
func (r *Registry) Handler() http.Handler {
	mux := http.NewServeMux()
	routes := map[string]func(*http.Request) (any, error){
		"GET /{$}":                                                func(*http.Request) (any, error) { return struct{}{}, nil },
		"GET /contexts":                                           func(*http.Request) (any, error) { return []string{"."}, nil },
		"GET /schemas/types":                                      func(*http.Request) (any, error) { return []string{"AVRO"}, nil },
		"GET /schemas":                                            r.listSchemas,
		"GET /schemas/ids/{id}":                                   r.schemaByID,
		"GET /schemas/ids/{id}/schema":                            r.rawSchemaByID,
		"GET /schemas/ids/{id}/subjects":                          r.subjectsByID,
		"GET /schemas/ids/{id}/versions":                          r.versionsByID,
		"GET /subjects":                                           r.listSubjects,
		"POST /subjects/{subject}":                                r.lookup,
		"DELETE /subjects/{subject}":                              r.deleteSubject,
		"GET /subjects/{subject}/versions":                        r.listVersions,
		"POST /subjects/{subject}/versions":                       r.register,
		"GET /subjects/{subject}/versions/{version}":              r.getVersion,
		"DELETE /subjects/{subject}/versions/{version}":           r.deleteVersion,
		"GET /subjects/{subject}/versions/{version}/schema":       r.getVersionRaw,
		"GET /subjects/{subject}/versions/{version}/referencedby": r.referencedBy,
		"GET /config":                                             r.getGlobalConfig,
		"PUT /config":                                             r.putConfig,
		"DELETE /config":                                          r.deleteConfig,
		"GET /config/{subject}":                                   r.getSubjectConfig,
		"PUT /config/{subject}":                                   r.putConfig,
		"DELETE /config/{subject}":                                r.deleteConfig,
		"GET /mode":                                               r.getGlobalMode,
		"PUT /mode":                                               r.putMode,
		"GET /mode/{subject}":                                     r.getSubjectMode,
		"PUT /mode/{subject}":                                     r.putMode,
		"DELETE /mode/{subject}":                                  r.deleteMode,
		"POST /compatibility/subjects/{subject}/versions/{version}": r.compatWithVersion,
		"POST /compatibility/subjects/{subject}/versions":           r.compatWithAll,
	}
	for pattern, fn := range routes {
		mux.Handle(pattern, handler(fn))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if _, pattern := mux.Handler(req); pattern == "" {
			writeErr(w, unrouted(mux, req))
			return
		}
		mux.ServeHTTP(w, req)
	})
}

// unrouted is the JSON error for a request no route takes: 405 when the
// path exists with another method, else 404.
func unrouted(mux *http.ServeMux, req *http.Request) *apiError {
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
		probe := req.Clone(req.Context())
		probe.Method = m
		if _, p := mux.Handler(probe); p != "" {
			return errf(codeMethodNotAllowed, "HTTP 405 Method Not Allowed")
		}
	}
	return errf(codeNotFound, "HTTP 404 Not Found")
}

func queryBool(req *http.Request, name string) bool {
	b, _ := strconv.ParseBool(req.URL.Query().Get(name))
	return b
}

// readBody decodes a JSON request body of bounded size into v.
func (r *Registry) readBody(req *http.Request, v any) error {
	limit := int64(2*r.cfg.MaxSchemaBytes + 64<<10)
	body, err := io.ReadAll(io.LimitReader(req.Body, limit+1))
	if err != nil {
		return errf(codeBadRequest, "reading the request body: %v", err)
	}
	if int64(len(body)) > limit {
		return errf(codeSchemaTooLarge, "Request body exceeds %d bytes", limit)
	}
	d := json.NewDecoder(bytes.NewReader(body))
	if err := d.Decode(v); err != nil {
		return errf(codeBadRequest, "Unrecognized request body: %v", err)
	}
	return nil
}

// versionParam parses a {version} path value: a positive int or "latest"
// (-1). It returns -1 for latest.
func versionParam(req *http.Request) (int, error) {
	s := req.PathValue("version")
	if s == "latest" || s == "-1" {
		return -1, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 1 || v > math.MaxInt32 {
		return 0, errf(codeInvalidVersion, "The specified version '%s' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"", s)
	}
	return int(v), nil
}

func idParam(req *http.Request) (int, error) {
	id, err := strconv.ParseInt(req.PathValue("id"), 10, 64)
	if err != nil || id < 0 || id > math.MaxInt32 {
		return 0, errf(codeSchemaNotFound, "Schema %s not found", req.PathValue("id"))
	}
	return int(id), nil
}

func subjectNotFound(s string) *apiError {
	return errf(codeSubjectNotFound, "Subject '%s' not found.", s)
}

// subjectVersionJSON is a version as the API shows it.
type subjectVersionJSON struct {
	Subject    string      `json:"subject"`
	Version    int         `json:"version"`
	ID         int         `json:"id"`
	SchemaType string      `json:"schemaType,omitempty"`
	References []reference `json:"references,omitempty"`
	Schema     string      `json:"schema"`
}

func versionJSON(v *version) subjectVersionJSON {
	return subjectVersionJSON{Subject: v.subject, Version: v.version, ID: v.id, Schema: v.schema}
}

// schemaRequest is the body of register, lookup and compatibility calls.
type schemaRequest struct {
	Schema     string      `json:"schema"`
	SchemaType string      `json:"schemaType"`
	References []reference `json:"references"`
	ID         int         `json:"id"`
	Version    int         `json:"version"`
}

// parseSchemaRequest reads and validates a schema body; it returns the
// compacted schema text and its parsed form.
func (r *Registry) parseSchemaRequest(req *http.Request) (schemaRequest, error) {
	var sr schemaRequest
	if err := r.readBody(req, &sr); err != nil {
		return sr, err
	}
	if t := strings.ToUpper(sr.SchemaType); t != "" && t != "AVRO" {
		return sr, errf(codeInvalidSchema, "Invalid schema: schema type %s is not supported; this registry stores AVRO schemas only", sr.SchemaType)
	}
	if len(sr.References) > 0 {
		return sr, errf(codeInvalidSchema, "Invalid schema: schema references are not supported; inline the referenced named types")
	}
	if len(sr.Schema) > r.cfg.MaxSchemaBytes {
		return sr, errf(codeSchemaTooLarge, "Schema is too large: %d bytes, the limit is %d", len(sr.Schema), r.cfg.MaxSchemaBytes)
	}
	if strings.TrimSpace(sr.Schema) == "" {
		return sr, errf(codeInvalidSchema, "Invalid schema: empty schema")
	}
	if _, err := r.parse(sr.Schema); err != nil {
		return sr, errf(codeInvalidSchema, "Invalid schema %s, details: %v", truncStr(sr.Schema, 200), err)
	}
	var buf bytes.Buffer
	if json.Compact(&buf, []byte(sr.Schema)) == nil {
		sr.Schema = buf.String()
	}
	return sr, nil
}

func truncStr(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
