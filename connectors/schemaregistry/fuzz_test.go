package schemaregistry

import (
	"bytes"
	"testing"
)

// FuzzApply feeds arbitrary _schemas records (a key and an optional value,
// as read from a topic anyone may write to) to the state: applying never
// panics, and the state's indexes stay consistent.
func FuzzApply(f *testing.F) {
	seeds := [][2]string{
		{`{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}`, `{"subject":"s","version":1,"id":1,"schema":"\"string\"","deleted":false}`},
		{`{"keytype":"SCHEMA","subject":"s","version":2,"magic":1}`, `{"subject":"s","version":2,"id":1,"schema":"\"string\"","deleted":true}`},
		{`{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}`, ""},
		{`{"keytype":"CONFIG","subject":null,"magic":0}`, `{"compatibilityLevel":"FULL"}`},
		{`{"keytype":"CONFIG","subject":"s","magic":0}`, ""},
		{`{"keytype":"MODE","subject":"s","magic":0}`, `{"mode":"READONLY"}`},
		{`{"keytype":"DELETE_SUBJECT","subject":"s","magic":0}`, `{"subject":"s","version":9}`},
		{`{"keytype":"CLEAR_SUBJECT","subject":"s","magic":0}`, `{"subject":"s"}`},
		{`{"keytype":"NOOP","subject":"_loanflow_max_id","magic":0}`, `{"maxId":12}`},
		{`{"keytype":"SCHEMA","subject":"s","version":-3,"magic":1}`, `{"id":-1}`},
		{`[]`, `{}`},
	}
	for _, s := range seeds {
		f.Add([]byte(s[0]), []byte(s[1]), []byte(seeds[0][0]), []byte(seeds[0][1]))
	}
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 []byte) {
		st := newState()
		for _, rec := range [][2][]byte{{k1, v1}, {k2, v2}, {k1, nil}} {
			value := rec[1]
			if len(value) == 0 {
				value = nil
			}
			_ = st.apply(rec[0], value)
			checkState(t, st)
		}
	})
}

// checkState checks the state's invariants: every version's id is known,
// use counts match, ids are at most maxID, versions ascend, no subject is
// empty, and equal schemas resolve to one id.
func checkState(t *testing.T, st *state) {
	t.Helper()
	uses := map[int]int{}
	for name, vs := range st.subjects {
		if len(vs) == 0 {
			t.Fatalf("subject %q has no versions", name)
		}
		for i, v := range vs {
			if i > 0 && vs[i-1].version >= v.version {
				t.Fatalf("subject %q versions out of order", name)
			}
			info, ok := st.ids[v.id]
			if !ok || !bytes.Equal([]byte(schemaIdentity(info.schema)), []byte(schemaIdentity(v.schema))) {
				t.Fatalf("version %s/%d: id %d unknown or another schema", name, v.version, v.id)
			}
			uses[v.id]++
		}
	}
	for id, info := range st.ids {
		if info.uses != uses[id] || id > st.maxID {
			t.Fatalf("id %d: %d uses recorded, %d counted, maxID %d", id, info.uses, uses[id], st.maxID)
		}
	}
	for key, id := range st.idByKey {
		if info, ok := st.ids[id]; !ok || info.key != key {
			t.Fatalf("identity index points at %d, which is not that schema", id)
		}
	}
}
