package schemaregistry

import (
	"net/http"
)

// Read-only endpoints. Each takes the state's read lock for its duration.

func (r *Registry) view(fn func(st *state) (any, error)) (any, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return fn(r.mu.st)
}

func (r *Registry) listSubjects(req *http.Request) (any, error) {
	prefix, deleted := req.URL.Query().Get("subjectPrefix"), queryBool(req, "deleted")
	return r.view(func(st *state) (any, error) { return st.subjectNames(prefix, deleted), nil })
}

func (r *Registry) listVersions(req *http.Request) (any, error) {
	subject, deleted := req.PathValue("subject"), queryBool(req, "deleted")
	return r.view(func(st *state) (any, error) {
		vs := st.versions(subject, deleted)
		if len(vs) == 0 {
			return nil, subjectNotFound(subject)
		}
		out := make([]int, len(vs))
		for i, v := range vs {
			out[i] = v.version
		}
		return out, nil
	})
}

// resolveVersion finds the version named by the request's {version}.
func resolveVersion(st *state, req *http.Request, deleted bool) (*version, error) {
	subject := req.PathValue("subject")
	ver, err := versionParam(req)
	if err != nil {
		return nil, err
	}
	if len(st.versions(subject, deleted)) == 0 {
		return nil, subjectNotFound(subject)
	}
	var v *version
	if ver < 0 {
		v = st.latest(subject, deleted)
	} else {
		v = st.find(subject, ver, deleted)
	}
	if v == nil {
		return nil, errf(codeVersionNotFound, "Version %s not found.", req.PathValue("version"))
	}
	return v, nil
}

func (r *Registry) getVersion(req *http.Request) (any, error) {
	return r.view(func(st *state) (any, error) {
		v, err := resolveVersion(st, req, queryBool(req, "deleted"))
		if err != nil {
			return nil, err
		}
		return versionJSON(v), nil
	})
}

func (r *Registry) getVersionRaw(req *http.Request) (any, error) {
	return r.view(func(st *state) (any, error) {
		v, err := resolveVersion(st, req, queryBool(req, "deleted"))
		if err != nil {
			return nil, err
		}
		return rawJSON(v.schema), nil
	})
}

func (r *Registry) referencedBy(req *http.Request) (any, error) {
	return r.view(func(st *state) (any, error) {
		if _, err := resolveVersion(st, req, true); err != nil {
			return nil, err
		}
		return []int{}, nil // references are not supported, so nothing refers
	})
}

func schemaIDNotFound(id int) *apiError {
	return errf(codeSchemaNotFound, "Schema %d not found", id)
}

// byID returns the schema of id, or the 40403 error.
func byID(st *state, req *http.Request) (int, *idInfo, error) {
	id, err := idParam(req)
	if err != nil {
		return 0, nil, err
	}
	info, ok := st.ids[id]
	if !ok {
		return 0, nil, schemaIDNotFound(id)
	}
	return id, info, nil
}

func (r *Registry) schemaByID(req *http.Request) (any, error) {
	return r.view(func(st *state) (any, error) {
		_, info, err := byID(st, req)
		if err != nil {
			return nil, err
		}
		out := map[string]any{"schema": info.schema}
		if queryBool(req, "fetchMaxId") {
			out["maxId"] = st.maxID
		}
		return out, nil
	})
}

func (r *Registry) rawSchemaByID(req *http.Request) (any, error) {
	return r.view(func(st *state) (any, error) {
		_, info, err := byID(st, req)
		if err != nil {
			return nil, err
		}
		return rawJSON(info.schema), nil
	})
}

func (r *Registry) subjectsByID(req *http.Request) (any, error) {
	return r.view(func(st *state) (any, error) {
		id, _, err := byID(st, req)
		if err != nil {
			return nil, err
		}
		out := []string{}
		for _, v := range st.usages(id, queryBool(req, "deleted")) {
			if len(out) == 0 || out[len(out)-1] != v.subject {
				out = append(out, v.subject)
			}
		}
		return out, nil
	})
}

func (r *Registry) versionsByID(req *http.Request) (any, error) {
	type subjectVersion struct {
		Subject string `json:"subject"`
		Version int    `json:"version"`
	}
	return r.view(func(st *state) (any, error) {
		id, _, err := byID(st, req)
		if err != nil {
			return nil, err
		}
		out := []subjectVersion{}
		for _, v := range st.usages(id, queryBool(req, "deleted")) {
			out = append(out, subjectVersion{v.subject, v.version})
		}
		return out, nil
	})
}

func (r *Registry) listSchemas(req *http.Request) (any, error) {
	q := req.URL.Query()
	prefix, deleted, latestOnly := q.Get("subjectPrefix"), queryBool(req, "deleted"), queryBool(req, "latestOnly")
	return r.view(func(st *state) (any, error) {
		out := []subjectVersionJSON{}
		for _, name := range st.subjectNames(prefix, deleted) {
			vs := st.versions(name, deleted)
			if latestOnly {
				vs = vs[len(vs)-1:]
			}
			for _, v := range vs {
				out = append(out, versionJSON(v))
			}
		}
		return out, nil
	})
}

// compatLevel is the level in force for subject.
func (r *Registry) compatLevel(st *state, subject string) string {
	if l, ok := st.subjectCompat[subject]; ok {
		return l
	}
	if st.globalCompat != "" {
		return st.globalCompat
	}
	return r.cfg.DefaultCompatibility
}

func modeOf(st *state, subject string) string {
	if m, ok := st.subjectMode[subject]; ok {
		return m
	}
	if st.globalMode != "" {
		return st.globalMode
	}
	return modeReadWrite
}

func (r *Registry) getGlobalConfig(*http.Request) (any, error) {
	return r.view(func(st *state) (any, error) {
		return configValue{CompatibilityLevel: r.compatLevel(st, "")}, nil
	})
}

func (r *Registry) getSubjectConfig(req *http.Request) (any, error) {
	subject := req.PathValue("subject")
	return r.view(func(st *state) (any, error) {
		if l, ok := st.subjectCompat[subject]; ok {
			return configValue{CompatibilityLevel: l}, nil
		}
		if queryBool(req, "defaultToGlobal") {
			return configValue{CompatibilityLevel: r.compatLevel(st, "")}, nil
		}
		return nil, errf(codeSubjectCompatNotSet, "Subject '%s' does not have subject-level compatibility configured", subject)
	})
}

func (r *Registry) getGlobalMode(*http.Request) (any, error) {
	return r.view(func(st *state) (any, error) { return modeValue{Mode: modeOf(st, "")}, nil })
}

func (r *Registry) getSubjectMode(req *http.Request) (any, error) {
	subject := req.PathValue("subject")
	return r.view(func(st *state) (any, error) {
		if m, ok := st.subjectMode[subject]; ok {
			return modeValue{Mode: m}, nil
		}
		if queryBool(req, "defaultToGlobal") {
			return modeValue{Mode: modeOf(st, "")}, nil
		}
		return nil, errf(codeSubjectModeNotSet, "Subject '%s' does not have subject-level mode configured", subject)
	})
}

func (r *Registry) lookup(req *http.Request) (any, error) {
	subject, deleted := req.PathValue("subject"), queryBool(req, "deleted")
	sr, err := r.parseSchemaRequest(req)
	if err != nil {
		return nil, err
	}
	return r.view(func(st *state) (any, error) {
		vs := st.versions(subject, deleted)
		if len(vs) == 0 {
			return nil, subjectNotFound(subject)
		}
		for i := len(vs) - 1; i >= 0; i-- {
			if equalSchema(vs[i].schema, sr.Schema) {
				return versionJSON(vs[i]), nil
			}
		}
		return nil, errf(codeSchemaNotFound, "Schema not found")
	})
}
