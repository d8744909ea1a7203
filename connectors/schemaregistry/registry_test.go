package schemaregistry

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/riferrei/srclient"
	"github.com/twmb/franz-go/pkg/sr"
)

// Schemas of one subject's evolution.
const (
	appV1 = `{"type":"record","name":"Application","namespace":"io.loanflow.test","fields":[
		{"name":"id","type":"string"},
		{"name":"score","type":"int"}]}`
	// appV2 adds an optional field with a default: compatible both ways.
	appV2 = `{"type":"record","name":"Application","namespace":"io.loanflow.test","fields":[
		{"name":"id","type":"string"},
		{"name":"score","type":"int"},
		{"name":"channel","type":["null","string"],"default":null}]}`
	// appNoScore removes the required field score: new readers can read
	// old data (BACKWARD), old readers cannot read new data (not FORWARD).
	appNoScore = `{"type":"record","name":"Application","namespace":"io.loanflow.test","fields":[
		{"name":"id","type":"string"}]}`
	// appRequired adds a required field without default: old readers can
	// read new data (FORWARD), new readers cannot read old data.
	appRequired = `{"type":"record","name":"Application","namespace":"io.loanflow.test","fields":[
		{"name":"id","type":"string"},
		{"name":"score","type":"int"},
		{"name":"lender","type":"string"}]}`
)

func avroSchema(s string) sr.Schema { return sr.Schema{Schema: s, Type: sr.TypeAvro} }

// responseErr asserts err is a registry error with the given code and
// returns its message.
func responseErr(t *testing.T, err error, code int) string {
	t.Helper()
	var re *sr.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("got %v, want registry error %d", err, code)
	}
	if re.ErrorCode != code {
		t.Fatalf("got error code %d (%s), want %d", re.ErrorCode, re.Message, code)
	}
	return re.Message
}

func TestRegisterAndReadWithFranzGo(t *testing.T) {
	r := start(t, Config{})
	cl := srClient(t, r.Registry)
	ctx := context.Background()

	id1, err := cl.RegisterSchema(ctx, "app-value", avroSchema(appV1), -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	again, err := cl.RegisterSchema(ctx, "app-value", avroSchema(strings.ReplaceAll(appV1, "\n\t\t", " ")), -1, -1)
	if err != nil || again != id1 {
		t.Fatalf("registering the same schema twice: id %d then %d (%v)", id1, again, err)
	}
	other, err := cl.RegisterSchema(ctx, "other-value", avroSchema(appV1), -1, -1)
	if err != nil || other != id1 {
		t.Fatalf("same schema in another subject: id %d, want %d (%v)", other, id1, err)
	}
	ss, err := cl.CreateSchema(ctx, "app-value", avroSchema(appV2))
	if err != nil {
		t.Fatal(err)
	}
	if ss.ID == id1 || ss.Version != 2 || ss.Subject != "app-value" {
		t.Fatalf("second version: %+v", ss)
	}

	if vs, err := cl.SubjectVersions(ctx, "app-value"); err != nil || !slices.Equal(vs, []int{1, 2}) {
		t.Fatalf("versions %v (%v)", vs, err)
	}
	latest, err := cl.SchemaByVersion(ctx, "app-value", -1)
	if err != nil || latest.Version != 2 || latest.ID != ss.ID {
		t.Fatalf("latest: %+v (%v)", latest, err)
	}
	byID, err := cl.SchemaByID(ctx, id1)
	if err != nil || !equalSchema(byID.Schema, appV1) {
		t.Fatalf("by id: %+v (%v)", byID, err)
	}
	text, err := cl.SchemaTextByVersion(ctx, "app-value", 1)
	if err != nil || !equalSchema(text, appV1) {
		t.Fatalf("raw text: %q (%v)", text, err)
	}
	subjects, err := cl.Subjects(ctx)
	if err != nil || !slices.Equal(subjects, []string{"app-value", "other-value"}) {
		t.Fatalf("subjects %v (%v)", subjects, err)
	}
	usages, err := cl.SchemaVersionsByID(ctx, id1)
	if err != nil || len(usages) != 2 {
		t.Fatalf("usages of %d: %+v (%v)", id1, usages, err)
	}
	found, err := cl.LookupSchema(ctx, "app-value", avroSchema(appV2))
	if err != nil || found.Version != 2 || found.ID != ss.ID {
		t.Fatalf("lookup: %+v (%v)", found, err)
	}
	_, err = cl.LookupSchema(ctx, "app-value", avroSchema(appRequired))
	responseErr(t, err, 40403)
	_, err = cl.LookupSchema(ctx, "nope-value", avroSchema(appV1))
	responseErr(t, err, 40401)
	_, err = cl.SchemaByID(ctx, 9999)
	responseErr(t, err, 40403)
	_, err = cl.SchemaByVersion(ctx, "app-value", 7)
	responseErr(t, err, 40402)
	_, err = cl.SubjectVersions(ctx, "nope-value")
	responseErr(t, err, 40401)
	all, err := cl.AllSchemas(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("all schemas: %d (%v)", len(all), err)
	}
}

func TestRegisterAndReadWithSrclient(t *testing.T) {
	r := start(t, Config{})
	cl := srclient.NewSchemaRegistryClient(r.URL())
	cl.CachingEnabled(false)

	s1, err := cl.CreateSchema("loans-value", appV1, srclient.Avro)
	if err != nil {
		t.Fatal(err)
	}
	s1again, err := cl.CreateSchema("loans-value", appV1, srclient.Avro)
	if err != nil || s1again.ID() != s1.ID() {
		t.Fatalf("same schema twice: %d then %d (%v)", s1.ID(), s1again.ID(), err)
	}
	ok, err := cl.IsSchemaCompatible("loans-value", appV2, "latest", srclient.Avro)
	if err != nil || !ok {
		t.Fatalf("adding an optional field: compatible=%v (%v)", ok, err)
	}
	ok, err = cl.IsSchemaCompatible("loans-value", appRequired, "latest", srclient.Avro)
	if err != nil || ok {
		t.Fatalf("adding a required field under BACKWARD: compatible=%v (%v)", ok, err)
	}
	s2, err := cl.CreateSchema("loans-value", appV2, srclient.Avro)
	if err != nil {
		t.Fatal(err)
	}
	latest, err := cl.GetLatestSchema("loans-value")
	if err != nil || latest.ID() != s2.ID() || latest.Version() != 2 {
		t.Fatalf("latest: %+v (%v)", latest, err)
	}
	byID, err := cl.GetSchema(s1.ID())
	if err != nil || !equalSchema(byID.Schema(), appV1) {
		t.Fatalf("by id: %v", err)
	}
	found, err := cl.LookupSchema("loans-value", appV1, srclient.Avro)
	if err != nil || found.ID() != s1.ID() || found.Version() != 1 {
		t.Fatalf("lookup: %+v (%v)", found, err)
	}
	if vs, err := cl.GetSchemaVersions("loans-value"); err != nil || !slices.Equal(vs, []int{1, 2}) {
		t.Fatalf("versions %v (%v)", vs, err)
	}
	pairs, err := cl.GetSubjectVersionsById(s2.ID())
	if err != nil || len(pairs) != 1 {
		t.Fatalf("subject versions by id: %v (%v)", pairs, err)
	}

	level, err := cl.GetGlobalCompatibilityLevel()
	if err != nil || *level != srclient.Backward {
		t.Fatalf("global level %v (%v)", level, err)
	}
	if _, err := cl.GetCompatibilityLevel("loans-value", false); err == nil {
		t.Fatal("subject without its own level: want 40408")
	}
	level, err = cl.GetCompatibilityLevel("loans-value", true)
	if err != nil || *level != srclient.Backward {
		t.Fatalf("defaultToGlobal level %v (%v)", level, err)
	}
	set, err := cl.ChangeSubjectCompatibilityLevel("loans-value", srclient.Full)
	if err != nil || *set != srclient.Full {
		t.Fatalf("setting FULL: %v (%v)", set, err)
	}
	level, err = cl.GetCompatibilityLevel("loans-value", false)
	if err != nil || *level != srclient.Full {
		t.Fatalf("subject level %v (%v)", level, err)
	}
	if _, err := cl.CreateSchema("loans-value", appNoScore, srclient.Avro); err == nil || !strings.Contains(err.Error(), "score") {
		t.Fatalf("removing a required field under FULL: %v, want 409 naming score", err)
	}

	if err := cl.DeleteSubjectByVersion("loans-value", 1, false); err != nil {
		t.Fatal(err)
	}
	if vs, _ := cl.GetSchemaVersions("loans-value"); !slices.Equal(vs, []int{2}) {
		t.Fatalf("versions after deleting 1: %v", vs)
	}
	if err := cl.DeleteSubject("loans-value", true); err != nil {
		t.Fatal(err)
	}
	subjects, err := cl.GetSubjectsIncludingDeleted()
	if err != nil || len(subjects) != 0 {
		t.Fatalf("subjects after permanent delete: %v (%v)", subjects, err)
	}
}

// TestEvolution: adding an optional field is accepted under every level;
// removing a required field is a 409 naming the field where old readers
// must read new data (FORWARD, FULL), and accepted under BACKWARD, as in
// Confluent's registry; adding a required field is refused under BACKWARD.
func TestEvolution(t *testing.T) {
	r := start(t, Config{})
	cl := srClient(t, r.Registry)
	ctx := context.Background()
	cases := []struct {
		level       sr.CompatibilityLevel
		next        string
		wantErr     bool
		field, kind string
	}{
		{sr.CompatBackward, appV2, false, "", ""},
		{sr.CompatForward, appV2, false, "", ""},
		{sr.CompatFull, appV2, false, "", ""},
		{sr.CompatFullTransitive, appV2, false, "", ""},
		{sr.CompatBackward, appNoScore, false, "", ""},
		{sr.CompatForward, appNoScore, true, "score", "READER_FIELD_MISSING_DEFAULT_VALUE"},
		{sr.CompatFull, appNoScore, true, "score", "READER_FIELD_MISSING_DEFAULT_VALUE"},
		{sr.CompatBackward, appRequired, true, "lender", "READER_FIELD_MISSING_DEFAULT_VALUE"},
		{sr.CompatForward, appRequired, false, "", ""},
		{sr.CompatNone, appNoScore, false, "", ""},
		{sr.CompatBackward, `{"type":"record","name":"Application","namespace":"io.loanflow.test","fields":[{"name":"id","type":"string"},{"name":"score","type":"string"}]}`, true, "score", "TYPE_MISMATCH"},
	}
	for i, c := range cases {
		subject := "evolve-" + strings.ToLower(c.level.String()) + "-" + string(rune('a'+i))
		if res := cl.SetCompatibility(ctx, sr.SetCompatibility{Level: c.level}, subject); res[0].Err != nil {
			t.Fatal(res[0].Err)
		}
		if _, err := cl.RegisterSchema(ctx, subject, avroSchema(appV1), -1, -1); err != nil {
			t.Fatal(err)
		}
		check, err := cl.CheckCompatibility(sr.WithParams(ctx, sr.Verbose), subject, -1, avroSchema(c.next))
		if err != nil || check.Is == c.wantErr {
			t.Errorf("case %d %s: compatibility check %+v (%v)", i, c.level, check, err)
		}
		_, err = cl.RegisterSchema(ctx, subject, avroSchema(c.next), -1, -1)
		if !c.wantErr {
			if err != nil {
				t.Errorf("case %d %s: %v", i, c.level, err)
			}
			continue
		}
		msg := responseErr(t, err, 409)
		if !strings.Contains(msg, "'"+c.field+"'") || !strings.Contains(msg, c.kind) || !strings.Contains(msg, c.level.String()) {
			t.Errorf("case %d %s: 409 message does not name field %q / %s: %s", i, c.level, c.field, c.kind, msg)
		}
	}
}

func TestTransitiveChecksEveryVersion(t *testing.T) {
	r := start(t, Config{DefaultCompatibility: "backward_transitive"})
	cl := srClient(t, r.Registry)
	ctx := context.Background()
	// v1 {id, score}; v2 {id, score, channel=null}; v3 {id, channel=null}
	// (drops score, fine backward); v4 re-adds score without default:
	// BACKWARD accepts it against v3? No: readers of v4 need score, v3 data
	// lacks it. Use a v4 that is compatible with v3 but not v1 instead.
	v3 := `{"type":"record","name":"Application","namespace":"io.loanflow.test","fields":[{"name":"id","type":"string"},{"name":"channel","type":["null","string"],"default":null}]}`
	v4 := `{"type":"record","name":"Application","namespace":"io.loanflow.test","fields":[{"name":"id","type":"string"},{"name":"channel","type":"string","default":"pos"}]}`
	for _, s := range []string{appV1, appV2, v3} {
		if _, err := cl.RegisterSchema(ctx, "tr-value", avroSchema(s), -1, -1); err != nil {
			t.Fatal(err)
		}
	}
	// v4's channel is a string; v2 and v3 wrote ["null","string"]: the null
	// branch has no match, so v4 cannot read them.
	_, err := cl.RegisterSchema(ctx, "tr-value", avroSchema(v4), -1, -1)
	responseErr(t, err, 409)
	res := cl.SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatNone}, "tr-value")
	if res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	if _, err := cl.RegisterSchema(ctx, "tr-value", avroSchema(v4), -1, -1); err != nil {
		t.Fatalf("NONE: %v", err)
	}
}

func TestConfigEndpoints(t *testing.T) {
	r := start(t, Config{})
	cl := srClient(t, r.Registry)
	ctx := context.Background()
	if res := cl.Compatibility(ctx); res[0].Err != nil || res[0].Level != sr.CompatBackward {
		t.Fatalf("global: %+v", res[0])
	}
	if res := cl.SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatFullTransitive}); res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	if res := cl.Compatibility(ctx); res[0].Level != sr.CompatFullTransitive {
		t.Fatalf("global after PUT: %+v", res[0])
	}
	res := cl.Compatibility(ctx, "s-value")
	responseErr(t, res[0].Err, 40408)
	res = cl.Compatibility(sr.WithParams(ctx, sr.DefaultToGlobal), "s-value")
	if res[0].Err != nil || res[0].Level != sr.CompatFullTransitive {
		t.Fatalf("defaultToGlobal: %+v", res[0])
	}
	cl.SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatNone}, "s-value")
	if res := cl.Compatibility(ctx, "s-value"); res[0].Level != sr.CompatNone {
		t.Fatalf("subject: %+v", res[0])
	}
	if res := cl.ResetCompatibility(ctx, "s-value"); res[0].Err != nil || res[0].Level != sr.CompatNone {
		t.Fatalf("reset subject: %+v", res[0])
	}
	responseErr(t, cl.Compatibility(ctx, "s-value")[0].Err, 40408)
	if res := cl.ResetCompatibility(ctx); res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	if res := cl.Compatibility(ctx); res[0].Level != sr.CompatBackward {
		t.Fatalf("global after reset: %+v", res[0])
	}

	// An invalid level is a 42203.
	resp := do(t, r.Registry, "PUT", "/config", `{"compatibility":"SIDEWAYS"}`)
	if resp.code != 42203 || resp.status != 422 {
		t.Fatalf("invalid level: %+v", resp)
	}
}

func TestDeletes(t *testing.T) {
	r := start(t, Config{})
	cl := srClient(t, r.Registry)
	ctx := context.Background()
	id1, _ := cl.RegisterSchema(ctx, "d-value", avroSchema(appV1), -1, -1)
	id2, _ := cl.RegisterSchema(ctx, "d-value", avroSchema(appV2), -1, -1)

	// Permanent before soft: refused.
	responseErr(t, cl.DeleteSchema(ctx, "d-value", 1, sr.HardDelete), 40407)
	_, err := cl.DeleteSubject(ctx, "d-value", sr.HardDelete)
	responseErr(t, err, 40405)

	// Soft delete of version 1: hidden, id still readable, twice is 40406.
	if err := cl.DeleteSchema(ctx, "d-value", 1, sr.SoftDelete); err != nil {
		t.Fatal(err)
	}
	responseErr(t, cl.DeleteSchema(ctx, "d-value", 1, sr.SoftDelete), 40406)
	if vs, _ := cl.SubjectVersions(ctx, "d-value"); !slices.Equal(vs, []int{2}) {
		t.Fatalf("live versions %v", vs)
	}
	if vs, _ := cl.SubjectVersions(sr.WithParams(ctx, sr.ShowDeleted), "d-value"); !slices.Equal(vs, []int{1, 2}) {
		t.Fatalf("versions with deleted %v", vs)
	}
	if _, err := cl.SchemaByID(ctx, id1); err != nil {
		t.Fatalf("soft-deleted schema id must stay readable: %v", err)
	}
	_, err = cl.SchemaByVersion(ctx, "d-value", 1)
	responseErr(t, err, 40402)

	// Soft delete of the subject; then a soft delete again is 40404.
	vs, err := cl.DeleteSubject(ctx, "d-value", sr.SoftDelete)
	if err != nil || !slices.Equal(vs, []int{2}) {
		t.Fatalf("soft-deleting the subject: %v (%v)", vs, err)
	}
	_, err = cl.DeleteSubject(ctx, "d-value", sr.SoftDelete)
	responseErr(t, err, 40404)
	if subjects, _ := cl.Subjects(ctx); len(subjects) != 0 {
		t.Fatalf("subjects after soft delete: %v", subjects)
	}
	// Registering again continues the version numbers and reuses the id.
	ss, err := cl.CreateSchema(ctx, "d-value", avroSchema(appV2))
	if err != nil || ss.Version != 3 || ss.ID != id2 {
		t.Fatalf("re-register after soft delete: %+v (%v)", ss, err)
	}
	// Permanent delete of a soft-deleted version removes it for good.
	if err := cl.DeleteSchema(ctx, "d-value", 1, sr.HardDelete); err != nil {
		t.Fatal(err)
	}
	if vs, _ := cl.SubjectVersions(sr.WithParams(ctx, sr.ShowDeleted), "d-value"); !slices.Equal(vs, []int{2, 3}) {
		t.Fatalf("versions after permanent delete of 1: %v", vs)
	}
	_, err = cl.SchemaByID(ctx, id1)
	responseErr(t, err, 40403)
	_, err = cl.DeleteSubject(ctx, "missing-value", sr.SoftDelete)
	responseErr(t, err, 40401)
}

func TestModes(t *testing.T) {
	r := start(t, Config{})
	cl := srClient(t, r.Registry)
	ctx := context.Background()
	if res := cl.SetMode(ctx, sr.ModeReadOnly, "ro-value"); res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	_, err := cl.RegisterSchema(ctx, "ro-value", avroSchema(appV1), -1, -1)
	responseErr(t, err, 42205)
	if _, err := cl.RegisterSchema(ctx, "rw-value", avroSchema(appV1), -1, -1); err != nil {
		t.Fatal(err)
	}
	_, err = cl.RegisterSchema(ctx, "rw-value", avroSchema(appV2), 77, -1)
	responseErr(t, err, 42205)
	if res := cl.SetMode(ctx, sr.ModeImport, "imp-value"); res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	id, err := cl.RegisterSchema(ctx, "imp-value", avroSchema(appNoScore), 500, -1)
	if err != nil || id != 500 {
		t.Fatalf("import with id 500: %d (%v)", id, err)
	}
	if s, err := cl.SchemaByID(ctx, 500); err != nil || !equalSchema(s.Schema, appNoScore) {
		t.Fatalf("imported schema: %v", err)
	}
	// The next id assigned normally goes above the imported one.
	id, err = cl.RegisterSchema(ctx, "rw-value", avroSchema(appV2), -1, -1)
	if err != nil || id != 501 {
		t.Fatalf("id after import: %d (%v)", id, err)
	}
	if res := cl.Mode(ctx, "ro-value"); res[0].Err != nil || res[0].Mode != sr.ModeReadOnly {
		t.Fatalf("mode: %+v", res[0])
	}
}

type httpResult struct {
	status      int
	code        int
	message     string
	contentType string
	body        string
}

func do(t *testing.T, r *Registry, method, path, body string) httpResult {
	t.Helper()
	req, err := http.NewRequest(method, r.URL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ContentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	res := httpResult{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), body: string(b)}
	var e struct {
		Code    int    `json:"error_code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &e) == nil {
		res.code, res.message = e.Code, e.Message
	}
	return res
}

func TestHTTPErrors(t *testing.T) {
	r := start(t, Config{MaxSchemaBytes: 4096})
	cases := []struct {
		method, path, body string
		status, code       int
	}{
		{"GET", "/nope", "", 404, 404},
		{"PATCH", "/subjects", "", 405, 405},
		{"POST", "/subjects/x-value/versions", `{"schema":"{\"type\":\"recrd\"}"}`, 422, 42201},
		{"POST", "/subjects/x-value/versions", `{"schema":"not json"}`, 422, 42201},
		{"POST", "/subjects/x-value/versions", `{"schema":"\"string\"","schemaType":"PROTOBUF"}`, 422, 42201},
		{"POST", "/subjects/x-value/versions", `{"schema":"` + strings.Repeat(" ", 5000) + `\"string\""}`, 422, 42209},
		{"POST", "/subjects/x-value/versions", `{"schema":`, 400, 400},
		{"GET", "/subjects/x-value/versions/0", "", 422, 42202},
		{"GET", "/subjects/x-value/versions/abc", "", 422, 42202},
		{"GET", "/schemas/ids/abc", "", 404, 40403},
		{"PUT", "/mode", `{"mode":"SOMETIMES"}`, 422, 42204},
	}
	for _, c := range cases {
		res := do(t, r.Registry, c.method, c.path, c.body)
		if res.status != c.status || res.code != c.code || res.message == "" || res.contentType != ContentType {
			t.Errorf("%s %s: %+v, want status %d code %d", c.method, c.path, res, c.status, c.code)
		}
	}
	ok := do(t, r.Registry, "POST", "/subjects/x-value/versions", `{"schema":"\"string\""}`)
	if ok.status != 200 || ok.body != "{\"id\":1}\n" || ok.contentType != ContentType {
		t.Fatalf("register: %+v", ok)
	}
	raw := do(t, r.Registry, "GET", "/subjects/x-value/versions/latest/schema", "")
	if raw.body != `"string"` {
		t.Fatalf("raw schema %q", raw.body)
	}
	types := do(t, r.Registry, "GET", "/schemas/types", "")
	if types.body != "[\"AVRO\"]\n" {
		t.Fatalf("types %q", types.body)
	}
}
