package schemaregistry

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
)

// plan decides, from the current state, which records a request writes and
// what it answers. It runs under the state's read lock and must not block.
type plan func(st *state) (recs []*kgo.Record, resp any, err error)

// mutate runs p with writers serialized: p sees every earlier write
// applied, its records are written in one transaction, and the answer is
// given once they are applied, so it reflects the new state.
func (r *Registry) mutate(req *http.Request, p plan) (any, error) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(req.Context()), r.cfg.WriteTimeout)
	defer cancel()
	if err := r.writable(ctx); err != nil {
		return nil, err
	}
	r.mu.RLock()
	recs, resp, err := p(r.mu.st)
	r.mu.RUnlock()
	if err != nil || len(recs) == 0 {
		return resp, err
	}
	if err := r.write(ctx, recs...); err != nil {
		return nil, r.writeErr(err)
	}
	return resp, nil
}

func (r *Registry) writeErr(err error) *apiError {
	if r.fenced {
		return errf(codeUnknownLeader, "This registry no longer writes topic %s: another registry with transactional id %s took over; send writes there (%v)", r.cfg.Topic, r.cfg.TransactionalID, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return errf(codeOperationTimeout, "Operation timed out: %v", err)
	}
	return errf(codeStoreError, "Error in the backend data store: %v", err)
}

func record(key, value []byte) *kgo.Record { return &kgo.Record{Key: key, Value: value} }

func schemaRecord(v *version) *kgo.Record {
	return record(encodeSchemaKey(v.subject, v.version), mustJSON(schemaValue{
		Subject: v.subject, Version: v.version, ID: v.id, Schema: v.schema, Deleted: v.deleted,
	}))
}

func writable(st *state, subject string) error {
	if m := modeOf(st, subject); m == modeReadOnly || m == modeReadOnlyOverride {
		return errf(codeOperationNotPermitted, "Subject '%s' is in read-only mode", subject)
	}
	return nil
}

func (r *Registry) register(req *http.Request) (any, error) {
	subject := req.PathValue("subject")
	if subject == "" || strings.ContainsRune(subject, 0) {
		return nil, errf(42208, "Subject name '%s' is invalid", subject)
	}
	sr, err := r.parseSchemaRequest(req)
	if err != nil {
		return nil, err
	}
	wrote := false
	resp, err := r.mutate(req, func(st *state) ([]*kgo.Record, any, error) {
		recs, resp, err := r.planRegister(st, subject, sr)
		wrote = len(recs) > 0
		return recs, resp, err
	})
	if err != nil || !wrote {
		return resp, err
	}
	return resp, r.verifyRegistered(subject, resp.(idResponse).ID)
}

// verifyRegistered checks that the subject now holds the schema id a
// registration answered, which fails only if another writer on the same
// topic won a race for the id (see doc.go: one writer per topic).
func (r *Registry) verifyRegistered(subject string, id int) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, v := range r.mu.st.versions(subject, false) {
		if v.id == id {
			return nil
		}
	}
	return errf(codeStoreError, "Error in the backend data store: the registration of id %d under '%s' was overtaken by another writer of the storage topic; retry", id, subject)
}

type idResponse struct {
	ID int `json:"id"`
}

func (r *Registry) planRegister(st *state, subject string, sr schemaRequest) ([]*kgo.Record, any, error) {
	if err := writable(st, subject); err != nil {
		return nil, nil, err
	}
	importing := modeOf(st, subject) == modeIm
	if sr.ID > 0 && !importing {
		return nil, nil, errf(codeOperationNotPermitted, "Subject '%s' is not in import mode; registering with an explicit id needs mode IMPORT", subject)
	}
	live := st.versions(subject, false)
	for i := len(live) - 1; i >= 0; i-- {
		if equalSchema(live[i].schema, sr.Schema) {
			if sr.ID > 0 && sr.ID != live[i].id {
				return nil, nil, errf(codeIDDoesNotMatch, "Schema already registered with id %d instead of input id %d", live[i].id, sr.ID)
			}
			return nil, idResponse{live[i].id}, nil // same schema, same id
		}
	}
	if !importing {
		if err := r.checkRegister(st, subject, sr.Schema, live); err != nil {
			return nil, nil, err
		}
	}
	ver, err := r.pickVersion(st, subject, sr)
	if err != nil {
		return nil, nil, err
	}
	id, err := r.pickID(st, sr)
	if err != nil {
		return nil, nil, err
	}
	v := &version{subject: subject, version: ver, id: id, schema: sr.Schema}
	return []*kgo.Record{schemaRecord(v)}, idResponse{id}, nil
}

// checkRegister enforces the subject's compatibility level: 409 with
// Confluent's message format, whose first detail names the field.
func (r *Registry) checkRegister(st *state, subject, schema string, live []*version) error {
	parsed, err := r.parse(schema)
	if err != nil {
		return errf(codeInvalidSchema, "Invalid schema: %v", err)
	}
	level := r.compatLevel(st, subject)
	if in := checkCompat(level, parsed, live, r.parse); in != nil {
		return errf(codeIncompatible, "Schema being registered is incompatible with an earlier schema for subject \"%s\", details: [%s]",
			subject, strings.Join(in.messages(), ", "))
	}
	return nil
}

func (r *Registry) pickID(st *state, sr schemaRequest) (int, error) {
	if sr.ID > 0 {
		if info, ok := st.ids[sr.ID]; ok && !equalSchema(info.schema, sr.Schema) {
			return 0, errf(codeIDDoesNotMatch, "Overwrite new schema with id %d is not permitted.", sr.ID)
		}
		return sr.ID, nil
	}
	if id, ok := st.idByKey[schemaIdentity(sr.Schema)]; ok {
		return id, nil // the same schema keeps its id across subjects
	}
	if len(st.ids) >= r.cfg.MaxSchemas {
		return 0, errf(codeOperationNotPermitted, "The registry holds %d schemas, its limit (MaxSchemas); delete unused subjects permanently or raise the limit", len(st.ids))
	}
	return st.maxID + 1, nil
}

func (r *Registry) pickVersion(st *state, subject string, sr schemaRequest) (int, error) {
	if n := len(st.subjects[subject]); n >= r.cfg.MaxVersionsPerSubject {
		return 0, errf(codeOperationNotPermitted, "Subject '%s' has %d versions, its limit (MaxVersionsPerSubject); delete old versions permanently", subject, n)
	}
	if sr.Version > 0 {
		if st.find(subject, sr.Version, true) != nil {
			return 0, errf(codeInvalidVersion, "Version %d already exists in subject '%s'", sr.Version, subject)
		}
		return sr.Version, nil
	}
	return st.nextVersion(subject), nil
}

func (r *Registry) deleteSubject(req *http.Request) (any, error) {
	subject, permanent := req.PathValue("subject"), queryBool(req, "permanent")
	return r.mutate(req, func(st *state) ([]*kgo.Record, any, error) {
		if err := writable(st, subject); err != nil {
			return nil, nil, err
		}
		all, live := st.versions(subject, true), st.versions(subject, false)
		switch {
		case len(all) == 0:
			return nil, nil, subjectNotFound(subject)
		case !permanent && len(live) == 0:
			return nil, nil, errf(codeSubjectSoftDeleted, "Subject '%s' was soft deleted.Set permanent=true to delete permanently", subject)
		case permanent && len(live) > 0:
			return nil, nil, errf(codeSubjectNotSoftDeleted, "Subject '%s' was not deleted first before being permanently deleted", subject)
		}
		var recs []*kgo.Record
		out := []int{}
		if !permanent {
			all = live // a soft delete reports the versions it hid
		}
		for _, v := range all {
			out = append(out, v.version)
			if permanent {
				recs = append(recs, record(encodeSchemaKey(subject, v.version), nil))
				continue
			}
			d := *v
			d.deleted = true
			recs = append(recs, schemaRecord(&d))
		}
		if permanent {
			recs = append(recs, clearSettings(st, subject)...)
			recs = append(recs, idWatermark(st))
		}
		return recs, out, nil
	})
}

// idWatermark records the highest id handed out, so that a registry
// reading the topic after compaction removed a permanently deleted schema
// does not give its id to another schema.
func idWatermark(st *state) *kgo.Record {
	return record(maxIDKey, mustJSON(noopValue{MaxID: st.maxID}))
}

// clearSettings removes a permanently deleted subject's config and mode.
func clearSettings(st *state, subject string) []*kgo.Record {
	var recs []*kgo.Record
	if _, ok := st.subjectCompat[subject]; ok {
		recs = append(recs, record(encodeSubjectKey(keyConfig, subject), nil))
	}
	if _, ok := st.subjectMode[subject]; ok {
		recs = append(recs, record(encodeSubjectKey(keyMode, subject), nil))
	}
	return recs
}

func (r *Registry) deleteVersion(req *http.Request) (any, error) {
	subject, permanent := req.PathValue("subject"), queryBool(req, "permanent")
	return r.mutate(req, func(st *state) ([]*kgo.Record, any, error) {
		if err := writable(st, subject); err != nil {
			return nil, nil, err
		}
		v, err := versionToDelete(st, req, permanent)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case permanent && !v.deleted:
			return nil, nil, errf(codeVersionNotSoftDeleted, "Subject '%s' Version %d was not deleted first before being permanently deleted", subject, v.version)
		case permanent:
			return []*kgo.Record{record(encodeSchemaKey(subject, v.version), nil), idWatermark(st)}, v.version, nil
		case v.deleted:
			return nil, nil, errf(codeVersionSoftDeleted, "Subject '%s' Version %d was soft deleted.Set permanent=true to delete permanently", subject, v.version)
		}
		d := *v
		d.deleted = true
		return []*kgo.Record{schemaRecord(&d)}, v.version, nil
	})
}

// versionToDelete finds the version a DELETE names: "latest" is the newest
// live version for a soft delete and the newest of all for a permanent one;
// a numbered version is found even when soft-deleted, so that deleting it
// again says so (40406) rather than "not found".
func versionToDelete(st *state, req *http.Request, permanent bool) (*version, error) {
	ver, err := versionParam(req)
	if err != nil || ver < 0 {
		if err != nil {
			return nil, err
		}
		return resolveVersion(st, req, permanent)
	}
	return resolveVersion(st, req, true)
}

// setCompatibility is the body of PUT /config.
type setCompatibility struct {
	Compatibility      string `json:"compatibility"`
	CompatibilityLevel string `json:"compatibilityLevel"`
}

func (r *Registry) putConfig(req *http.Request) (any, error) {
	subject := req.PathValue("subject")
	var body setCompatibility
	if err := r.readBody(req, &body); err != nil {
		return nil, err
	}
	raw := body.Compatibility
	if raw == "" {
		raw = body.CompatibilityLevel
	}
	level, ok := parseCompat(raw)
	if !ok {
		return nil, errf(codeInvalidCompatLevel, "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive")
	}
	return r.mutate(req, func(st *state) ([]*kgo.Record, any, error) {
		rec := record(encodeSubjectKey(keyConfig, subject), mustJSON(configValue{CompatibilityLevel: level}))
		return []*kgo.Record{rec}, map[string]string{"compatibility": level}, nil
	})
}

func (r *Registry) deleteConfig(req *http.Request) (any, error) {
	subject := req.PathValue("subject")
	return r.mutate(req, func(st *state) ([]*kgo.Record, any, error) {
		if subject == "" {
			prev := deletedConfig(r.compatLevel(st, ""))
			return []*kgo.Record{record(encodeSubjectKey(keyConfig, ""), nil)}, prev, nil
		}
		l, ok := st.subjectCompat[subject]
		if !ok {
			return nil, nil, errf(codeSubjectCompatNotSet, "Subject '%s' does not have subject-level compatibility configured", subject)
		}
		return []*kgo.Record{record(encodeSubjectKey(keyConfig, subject), nil)}, deletedConfig(l), nil
	})
}

// deletedConfig is the answer of DELETE /config: the removed level, under
// Confluent's key (compatibilityLevel) and the one franz-go's sr client
// reads (compatibility).
func deletedConfig(level string) map[string]string {
	return map[string]string{"compatibilityLevel": level, "compatibility": level}
}

func (r *Registry) putMode(req *http.Request) (any, error) {
	subject := req.PathValue("subject")
	var body modeValue
	if err := r.readBody(req, &body); err != nil {
		return nil, err
	}
	mode := strings.ToUpper(body.Mode)
	switch mode {
	case modeReadWrite, modeReadOnly, modeReadOnlyOverride, modeIm:
	default:
		return nil, errf(codeInvalidMode, "Invalid mode. Valid values are READWRITE, READONLY, READONLY_OVERRIDE and IMPORT")
	}
	return r.mutate(req, func(st *state) ([]*kgo.Record, any, error) {
		rec := record(encodeSubjectKey(keyMode, subject), mustJSON(modeValue{Mode: mode}))
		return []*kgo.Record{rec}, modeValue{Mode: mode}, nil
	})
}

func (r *Registry) deleteMode(req *http.Request) (any, error) {
	subject := req.PathValue("subject")
	return r.mutate(req, func(st *state) ([]*kgo.Record, any, error) {
		m, ok := st.subjectMode[subject]
		if !ok {
			return nil, nil, errf(codeSubjectModeNotSet, "Subject '%s' does not have subject-level mode configured", subject)
		}
		return []*kgo.Record{record(encodeSubjectKey(keyMode, subject), nil)}, modeValue{Mode: m}, nil
	})
}

// compatResponse is the answer of the /compatibility endpoints.
type compatResponse struct {
	IsCompatible bool     `json:"is_compatible"`
	Messages     []string `json:"messages,omitempty"`
}

func (r *Registry) compatWithVersion(req *http.Request) (any, error) {
	return r.compat(req, func(st *state) ([]*version, error) {
		v, err := resolveVersion(st, req, false)
		if err != nil {
			return nil, err
		}
		return []*version{v}, nil
	}, true)
}

func (r *Registry) compatWithAll(req *http.Request) (any, error) {
	return r.compat(req, func(st *state) ([]*version, error) {
		return st.versions(req.PathValue("subject"), false), nil
	}, false)
}

// compat checks a schema against the versions pick returns, under the
// subject's level (made non-transitive when checking one given version).
func (r *Registry) compat(req *http.Request, pick func(*state) ([]*version, error), single bool) (any, error) {
	subject := req.PathValue("subject")
	sr, err := r.parseSchemaRequest(req)
	if err != nil {
		return nil, err
	}
	parsed, err := r.parse(sr.Schema)
	if err != nil {
		return nil, errf(codeInvalidSchema, "Invalid schema: %v", err)
	}
	return r.view(func(st *state) (any, error) {
		olds, err := pick(st)
		if err != nil {
			return nil, err
		}
		level := r.compatLevel(st, subject)
		if single {
			level = strings.TrimSuffix(level, "_TRANSITIVE")
		}
		in := checkCompat(level, parsed, olds, r.parse)
		if in == nil {
			return compatResponse{IsCompatible: true}, nil
		}
		resp := compatResponse{IsCompatible: false}
		if queryBool(req, "verbose") {
			resp.Messages = in.messages()
		}
		return resp, nil
	})
}
