package schemaregistry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// version is one registered version of a subject.
type version struct {
	subject string
	version int
	id      int
	schema  string
	deleted bool // soft-deleted
}

// idInfo is a schema id: its text, identity and how many versions
// (soft-deleted ones included) use it. An id disappears with its last use.
type idInfo struct {
	schema string
	key    string
	uses   int
}

// state is the registry's content, derived only from the _schemas records
// applied in offset order. It is not safe for concurrent use; Registry
// guards it.
type state struct {
	subjects      map[string][]*version // ascending by version
	ids           map[int]*idInfo
	idByKey       map[string]int // schema identity → id, for ids in use
	maxID         int            // highest id ever applied; new ids go above it
	globalCompat  string         // "" means the configured default
	subjectCompat map[string]string
	globalMode    string // "" means READWRITE
	subjectMode   map[string]string
	warnings      int // records that could not be applied (logged)
}

func newState() *state {
	return &state{
		subjects:      make(map[string][]*version),
		ids:           make(map[int]*idInfo),
		idByKey:       make(map[string]int),
		subjectCompat: make(map[string]string),
		subjectMode:   make(map[string]string),
	}
}

// schemaIdentity is the key under which equal schemas share an id: the
// schema JSON with whitespace and object key order normalized (documents
// that differ in docs, defaults or field order are different schemas, as
// in Confluent's registry). Text that is not JSON keys as itself.
func schemaIdentity(schema string) string {
	var v any
	d := json.NewDecoder(strings.NewReader(schema))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		return schema
	}
	b, err := json.Marshal(v) // maps marshal with sorted keys
	if err != nil {
		return schema
	}
	return string(b)
}

// apply applies one _schemas record. A malformed record is reported and
// skipped: one bad record must not make the registry unable to start.
func (s *state) apply(key, value []byte) error {
	var k storeKey
	if err := json.Unmarshal(key, &k); err != nil {
		s.warnings++
		return fmt.Errorf("schemaregistry: skipping record with unreadable key %q: %v", trunc(key), err)
	}
	subject := ""
	if k.Subject != nil {
		subject = *k.Subject
	}
	var err error
	switch k.KeyType {
	case keySchema:
		err = s.applySchema(subject, k.Version, value)
	case keyConfig:
		err = applySetting(value, &s.globalCompat, s.subjectCompat, subject, func(b []byte) (string, error) {
			var v configValue
			err := json.Unmarshal(b, &v)
			return v.CompatibilityLevel, err
		})
	case keyMode:
		err = applySetting(value, &s.globalMode, s.subjectMode, subject, func(b []byte) (string, error) {
			var v modeValue
			err := json.Unmarshal(b, &v)
			return v.Mode, err
		})
	case keyDeleteSubject:
		err = s.applyDeleteSubject(value)
	case keyClearSubject:
		s.applyClearSubject(subject)
	case keyNoop:
		err = s.applyNoop(value)
	default:
		err = fmt.Errorf("unknown keytype %q", k.KeyType)
	}
	if err != nil {
		s.warnings++
		return fmt.Errorf("schemaregistry: skipping record %s: %v", trunc(key), err)
	}
	return nil
}

func trunc(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

func applySetting(value []byte, global *string, per map[string]string, subject string, parse func([]byte) (string, error)) error {
	if value == nil {
		if subject == "" {
			*global = ""
		} else {
			delete(per, subject)
		}
		return nil
	}
	v, err := parse(value)
	if err != nil {
		return err
	}
	if subject == "" {
		*global = v
	} else {
		per[subject] = v
	}
	return nil
}

func (s *state) applySchema(subject string, ver int, value []byte) error {
	if value == nil {
		s.removeVersion(subject, ver)
		return nil
	}
	var v schemaValue
	if err := json.Unmarshal(value, &v); err != nil {
		return err
	}
	if v.ID <= 0 || ver <= 0 {
		return fmt.Errorf("invalid id %d or version %d", v.ID, ver)
	}
	if info, ok := s.ids[v.ID]; ok && info.key != schemaIdentity(v.Schema) {
		return fmt.Errorf("id %d is already another schema", v.ID)
	}
	s.removeVersion(subject, ver)
	s.useID(v.ID, v.Schema)
	vs := s.subjects[subject]
	i := sort.Search(len(vs), func(i int) bool { return vs[i].version >= ver })
	s.subjects[subject] = slices.Insert(vs, i, &version{
		subject: subject, version: ver, id: v.ID, schema: v.Schema, deleted: v.Deleted,
	})
	return nil
}

func (s *state) useID(id int, schema string) {
	info, ok := s.ids[id]
	if !ok {
		info = &idInfo{schema: schema, key: schemaIdentity(schema)}
		s.ids[id] = info
		if _, taken := s.idByKey[info.key]; !taken {
			s.idByKey[info.key] = id
		}
	}
	info.uses++
	s.maxID = max(s.maxID, id)
}

func (s *state) releaseID(id int) {
	info, ok := s.ids[id]
	if !ok {
		return
	}
	if info.uses--; info.uses > 0 {
		return
	}
	delete(s.ids, id)
	if s.idByKey[info.key] == id {
		delete(s.idByKey, info.key)
	}
}

func (s *state) removeVersion(subject string, ver int) {
	vs := s.subjects[subject]
	i := slices.IndexFunc(vs, func(v *version) bool { return v.version == ver })
	if i < 0 {
		return
	}
	s.releaseID(vs[i].id)
	vs = slices.Delete(vs, i, i+1)
	if len(vs) == 0 {
		delete(s.subjects, subject)
		return
	}
	s.subjects[subject] = vs
}

func (s *state) applyNoop(value []byte) error {
	if value == nil {
		return nil
	}
	var v noopValue
	if err := json.Unmarshal(value, &v); err != nil {
		return err
	}
	s.maxID = max(s.maxID, v.MaxID)
	return nil
}

func (s *state) applyDeleteSubject(value []byte) error {
	var v deleteSubjectValue
	if err := json.Unmarshal(value, &v); err != nil {
		return err
	}
	for _, ver := range s.subjects[v.Subject] {
		if ver.version <= v.Version {
			ver.deleted = true
		}
	}
	return nil
}

func (s *state) applyClearSubject(subject string) {
	for _, v := range slices.Clone(s.subjects[subject]) {
		if v.deleted {
			s.removeVersion(subject, v.version)
		}
	}
}

// versions returns the subject's versions, soft-deleted ones only when
// deleted is true.
func (s *state) versions(subject string, deleted bool) []*version {
	var out []*version
	for _, v := range s.subjects[subject] {
		if deleted || !v.deleted {
			out = append(out, v)
		}
	}
	return out
}

// latest returns the newest version (live only unless deleted), or nil.
func (s *state) latest(subject string, deleted bool) *version {
	vs := s.versions(subject, deleted)
	if len(vs) == 0 {
		return nil
	}
	return vs[len(vs)-1]
}

// find returns version ver of subject, or nil.
func (s *state) find(subject string, ver int, deleted bool) *version {
	for _, v := range s.subjects[subject] {
		if v.version == ver && (deleted || !v.deleted) {
			return v
		}
	}
	return nil
}

// nextVersion is the version a new registration under subject gets: one
// above every version the subject holds, soft-deleted ones included.
func (s *state) nextVersion(subject string) int {
	vs := s.subjects[subject]
	if len(vs) == 0 {
		return 1
	}
	return vs[len(vs)-1].version + 1
}

// subjectNames returns the subjects with live versions (or any versions,
// with deleted), sorted, optionally filtered by prefix.
func (s *state) subjectNames(prefix string, deleted bool) []string {
	out := []string{}
	for name := range s.subjects {
		if strings.HasPrefix(name, prefix) && len(s.versions(name, deleted)) > 0 {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// usages returns the versions using id, sorted by subject and version.
func (s *state) usages(id int, deleted bool) []*version {
	var out []*version
	for _, name := range s.subjectNames("", true) {
		for _, v := range s.subjects[name] {
			if v.id == id && (deleted || !v.deleted) {
				out = append(out, v)
			}
		}
	}
	return out
}

// equalSchema reports whether two schema texts are the same schema.
func equalSchema(a, b string) bool {
	return a == b || bytes.Equal([]byte(schemaIdentity(a)), []byte(schemaIdentity(b)))
}
