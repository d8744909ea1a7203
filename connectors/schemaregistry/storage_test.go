package schemaregistry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"
)

// snapshot is everything the API shows, for comparing two registries.
type snapshot struct {
	Subjects []string
	Schemas  []sr.SubjectSchema
	Global   sr.CompatibilityLevel
	Levels   map[string]string
	Modes    map[string]string
	ByID     map[int]string
}

func takeSnapshot(t *testing.T, cl *sr.Client) snapshot {
	t.Helper()
	ctx := sr.WithParams(context.Background(), sr.ShowDeleted)
	var s snapshot
	var err error
	if s.Subjects, err = cl.Subjects(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Schemas, err = cl.AllSchemas(ctx); err != nil {
		t.Fatal(err)
	}
	s.Global = cl.Compatibility(context.Background())[0].Level
	s.Levels, s.Modes, s.ByID = map[string]string{}, map[string]string{}, map[int]string{}
	for _, subj := range s.Subjects {
		if res := cl.Compatibility(context.Background(), subj); res[0].Err == nil {
			s.Levels[subj] = res[0].Level.String()
		}
		if res := cl.Mode(context.Background(), subj); res[0].Err == nil {
			s.Modes[subj] = res[0].Mode.String()
		}
	}
	for _, ss := range s.Schemas {
		text, err := cl.SchemaTextByID(context.Background(), ss.ID)
		if err != nil {
			t.Fatalf("id %d: %v", ss.ID, err)
		}
		s.ByID[ss.ID] = text
	}
	return s
}

// populate exercises every kind of write.
func populate(t *testing.T, cl *sr.Client) {
	t.Helper()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 5; i++ {
		s := fmt.Sprintf(`{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"f%d","type":"int","default":%d}]}`, i, i)
		_, err := cl.RegisterSchema(ctx, "many-value", avroSchema(s), -1, -1)
		must(err)
	}
	_, err := cl.RegisterSchema(ctx, "app-value", avroSchema(appV1), -1, -1)
	must(err)
	_, err = cl.RegisterSchema(ctx, "app-value", avroSchema(appV2), -1, -1)
	must(err)
	_, err = cl.RegisterSchema(ctx, "copy-value", avroSchema(appV1), -1, -1)
	must(err)
	must(cl.SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatFull}, "app-value")[0].Err)
	must(cl.SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatForwardTransitive})[0].Err)
	must(cl.SetMode(ctx, sr.ModeReadOnly, "copy-value")[0].Err)
	must(cl.DeleteSchema(ctx, "many-value", 2, sr.SoftDelete))
	must(cl.DeleteSchema(ctx, "many-value", 3, sr.SoftDelete))
	must(cl.DeleteSchema(ctx, "many-value", 3, sr.HardDelete))
	_, err = cl.RegisterSchema(ctx, "gone-value", avroSchema(`"string"`), -1, -1)
	must(err)
	must(cl.SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatNone}, "gone-value")[0].Err)
	_, err = cl.DeleteSubject(ctx, "gone-value", sr.SoftDelete)
	must(err)
	_, err = cl.DeleteSubject(ctx, "gone-value", sr.HardDelete)
	must(err)
	_, err = cl.RegisterSchema(ctx, "soft-value", avroSchema(`"long"`), -1, -1)
	must(err)
	_, err = cl.DeleteSubject(ctx, "soft-value", sr.SoftDelete)
	must(err)
}

// TestRestartReloadsFromTopic: a registry started on the topic another one
// wrote shows exactly the same subjects, versions, ids, levels and modes,
// and goes on assigning ids and versions where the first stopped.
func TestRestartReloadsFromTopic(t *testing.T) {
	topic := testenv.Name(t, "_schemas")
	first := start(t, Config{Topic: topic})
	cl := srClient(t, first.Registry)
	populate(t, cl)
	before := takeSnapshot(t, cl)
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}

	second := start(t, Config{Topic: topic})
	cl2 := srClient(t, second.Registry)
	after := takeSnapshot(t, cl2)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("state after restart differs:\nbefore %+v\nafter  %+v", before, after)
	}
	ctx := context.Background()
	wantID := -1
	for _, ss := range before.Schemas {
		if ss.Subject == "app-value" && ss.Version == 2 {
			wantID = ss.ID
		}
	}
	id, err := cl2.RegisterSchema(ctx, "app-value", avroSchema(appV2), -1, -1)
	if err != nil || id != wantID {
		t.Fatalf("re-registering a known schema: id %d, want %d (%v)", id, wantID, err)
	}
	maxID := 0
	for id := range before.ByID {
		maxID = max(maxID, id)
	}
	// A new schema gets an id above every live one.
	ss, err := cl2.CreateSchema(ctx, "fresh-value", avroSchema(`{"type":"enum","name":"E","symbols":["A"]}`))
	if err != nil || ss.ID <= maxID || ss.Version != 1 {
		t.Fatalf("new schema after restart: %+v (%v), ids so far up to %d", ss, err, maxID)
	}
	if res := cl2.Compatibility(ctx, "app-value"); res[0].Level != sr.CompatFull {
		t.Fatalf("subject level after restart: %+v", res[0])
	}
}

// TestReloadAfterCompaction: once the broker has compacted the topic
// (overwritten keys and permanently deleted versions gone), a restarted
// registry still shows the same state.
func TestReloadAfterCompaction(t *testing.T) {
	topic := testenv.Name(t, "_schemas")
	// A broker of its own that compacts (the shared one never does).
	seeds := testenv.NewBroker(t, localsvc.BrokerOptions{CompactionInterval: time.Second}).Addrs()
	first := start(t, Config{Topic: topic, Brokers: seeds})
	cl := srClient(t, first.Registry)
	populate(t, cl)
	// The newest id is deleted permanently: its records compact away, yet
	// the id must not be handed out again.
	ctx := context.Background()
	lastID, err := cl.RegisterSchema(ctx, "last-value", avroSchema(`"double"`), -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.DeleteSubject(ctx, "last-value", sr.SoftDelete); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.DeleteSubject(ctx, "last-value", sr.HardDelete); err != nil {
		t.Fatal(err)
	}
	before := takeSnapshot(t, cl)
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}
	// The broker never compacts the last batch; any later write (here a
	// NOOP, as Confluent's registry writes them) makes the deletes
	// compactable. Then wait until the deleted schema's value records are
	// gone (only its tombstone remains).
	produceNoop(t, seeds, topic)
	deadline := time.Now().Add(60 * time.Second)
	for hasValue(readTopic(t, seeds, topic), "last-value") {
		if time.Now().After(deadline) {
			t.Fatalf("topic %s not compacted after 60s", topic)
		}
		time.Sleep(500 * time.Millisecond)
	}
	second := start(t, Config{Topic: topic, Brokers: seeds})
	cl2 := srClient(t, second.Registry)
	after := takeSnapshot(t, cl2)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("state after compaction differs:\nbefore %+v\nafter  %+v", before, after)
	}
	id, err := cl2.RegisterSchema(ctx, "next-value", avroSchema(`"float"`), -1, -1)
	if err != nil || id <= lastID {
		t.Fatalf("new id after compaction %d, must be above the deleted %d (%v)", id, lastID, err)
	}
}

func produceNoop(t *testing.T, seeds []string, topic string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Key: []byte(`{"keytype":"NOOP","magic":0}`)}).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// hasValue reports whether a SCHEMA record of subject with a value is in
// recs.
func hasValue(recs []*kgo.Record, subject string) bool {
	for _, r := range recs {
		if r.Value != nil && strings.Contains(string(r.Key), `"subject":"`+subject+`"`) {
			return true
		}
	}
	return false
}

// readTopic reads the topic's committed records (transaction markers
// skipped) until a poll finds nothing new for a second.
func readTopic(t *testing.T, seeds []string, topic string) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		recs := fs.Records()
		if len(recs) == 0 {
			return out
		}
		out = append(out, recs...)
	}
	t.Fatalf("reading %s: still records after 30s", topic)
	return nil
}

// TestTopicFormat: what the registry writes is Confluent's KafkaStore
// format, and the topic is a one-partition compacted topic.
func TestTopicFormat(t *testing.T) {
	topic := testenv.Name(t, "_schemas")
	r := start(t, Config{Topic: topic})
	cl := srClient(t, r.Registry)
	ctx := context.Background()
	id, err := cl.RegisterSchema(ctx, "fmt-value", avroSchema(`"string"`), -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	cl.SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatFull}, "fmt-value")
	cl.SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatNone})
	if err := cl.DeleteSchema(ctx, "fmt-value", 1, sr.SoftDelete); err != nil {
		t.Fatal(err)
	}
	if err := cl.DeleteSchema(ctx, "fmt-value", 1, sr.HardDelete); err != nil {
		t.Fatal(err)
	}
	recs := readTopic(t, testenv.Broker(t).Addrs(), topic)
	want := []struct{ key, value string }{
		{`{"keytype":"NOOP","subject":"_loanflow_sync","magic":0}`, ``}, // the sync at start
		{`{"keytype":"SCHEMA","subject":"fmt-value","version":1,"magic":1}`, fmt.Sprintf(`{"subject":"fmt-value","version":1,"id":%d,"schema":"\"string\"","deleted":false}`, id)},
		{`{"keytype":"CONFIG","subject":"fmt-value","magic":0}`, `{"compatibilityLevel":"FULL"}`},
		{`{"keytype":"CONFIG","subject":null,"magic":0}`, `{"compatibilityLevel":"NONE"}`},
		{`{"keytype":"SCHEMA","subject":"fmt-value","version":1,"magic":1}`, fmt.Sprintf(`{"subject":"fmt-value","version":1,"id":%d,"schema":"\"string\"","deleted":true}`, id)},
		{`{"keytype":"SCHEMA","subject":"fmt-value","version":1,"magic":1}`, ``},
		{`{"keytype":"NOOP","subject":"_loanflow_max_id","magic":0}`, fmt.Sprintf(`{"maxId":%d}`, id)},
	}
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d", len(recs), len(want))
	}
	for i, w := range want {
		if string(recs[i].Key) != w.key || string(recs[i].Value) != w.value || (w.value == "") != (recs[i].Value == nil) {
			t.Errorf("record %d:\n key %s\n value %s\nwant\n key %s\n value %s", i, recs[i].Key, recs[i].Value, w.key, w.value)
		}
	}

	adm, _ := kgo.NewClient(kgo.SeedBrokers(testenv.Broker(t).Addrs()...))
	defer adm.Close()
	cfgs, err := kadm.NewClient(adm).DescribeTopicConfigs(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := cfgs.On(topic, nil)
	policy := ""
	for _, c := range rc.Configs {
		if c.Key == "cleanup.policy" && c.Value != nil {
			policy = *c.Value
		}
	}
	if policy != "compact" {
		t.Fatalf("cleanup.policy %q", policy)
	}
}

// TestReadsConfluentWrittenTopic loads a topic written the way Confluent's
// registry writes it (DELETE_SUBJECT soft deletes, NOOP records, null
// global config subject, extra fields) and serves it.
func TestReadsConfluentWrittenTopic(t *testing.T) {
	topic := testenv.Name(t, "_schemas")
	seeds := testenv.Broker(t).Addrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.DefaultProduceTopic(topic), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	compact := "compact"
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, -1, map[string]*string{"cleanup.policy": &compact}, topic); err != nil {
		t.Fatal(err)
	}
	records := [][2]string{
		{`{"keytype":"NOOP","magic":0}`, ``},
		{`{"keytype":"SCHEMA","subject":"c-value","version":1,"magic":1}`, `{"subject":"c-value","version":1,"id":11,"schemaType":"AVRO","schema":"\"string\"","deleted":false,"md5":"abc"}`},
		{`{"keytype":"SCHEMA","subject":"c-value","version":2,"magic":1}`, `{"subject":"c-value","version":2,"id":12,"schema":"[\"null\",\"string\"]","deleted":false}`},
		{`{"keytype":"CONFIG","subject":null,"magic":0}`, `{"compatibilityLevel":"FULL_TRANSITIVE","alias":null}`},
		{`{"keytype":"SCHEMA","subject":"d-value","version":1,"magic":1}`, `{"subject":"d-value","version":1,"id":11,"schema":"\"string\"","deleted":false}`},
		{`{"keytype":"DELETE_SUBJECT","subject":"d-value","magic":0}`, `{"subject":"d-value","version":1}`},
		{`not json`, `garbage`},
	}
	for _, rec := range records {
		r := &kgo.Record{Key: []byte(rec[0])}
		if rec[1] != "" {
			r.Value = []byte(rec[1])
		}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	reg := start(t, Config{Topic: topic})
	scl := srClient(t, reg.Registry)
	if subjects, err := scl.Subjects(ctx); err != nil || !reflect.DeepEqual(subjects, []string{"c-value"}) {
		t.Fatalf("subjects %v (%v)", subjects, err)
	}
	if res := scl.Compatibility(ctx); res[0].Level != sr.CompatFullTransitive {
		t.Fatalf("global level %+v", res[0])
	}
	latest, err := scl.SchemaByVersion(ctx, "c-value", -1)
	if err != nil || latest.ID != 12 {
		t.Fatalf("latest %+v (%v)", latest, err)
	}
	// The next id goes above the highest one in the topic.
	id, err := scl.RegisterSchema(ctx, "n-value", avroSchema(`"bytes"`), -1, -1)
	if err != nil || id != 13 {
		t.Fatalf("new id %d (%v)", id, err)
	}
	// Soft-deleted by DELETE_SUBJECT, yet id 11 stays readable.
	if _, err := scl.SchemaByID(ctx, 11); err != nil {
		t.Fatal(err)
	}
	// A plain GET works with any HTTP client.
	resp, err := http.Get(reg.URL() + "/subjects/d-value/versions?deleted=true")
	if err != nil {
		t.Fatal(err)
	}
	var vs []int
	json.NewDecoder(resp.Body).Decode(&vs)
	resp.Body.Close()
	if !reflect.DeepEqual(vs, []int{1}) {
		t.Fatalf("deleted versions %v", vs)
	}
}

func TestRefusesUncompactedTopic(t *testing.T) {
	topic := testenv.Name(t, "_schemas")
	cl, err := kgo.NewClient(kgo.SeedBrokers(testenv.Broker(t).Addrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	del := "delete"
	if _, err := kadm.NewClient(cl).CreateTopic(context.Background(), 1, -1, map[string]*string{"cleanup.policy": &del}, topic); err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Brokers: testenv.Broker(t).Addrs(), Listen: "127.0.0.1:0", Topic: topic})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Run(ctx); err == nil || !errors.Is(err, ErrTopicNotCompacted) {
		t.Fatalf("Run on an uncompacted topic: %v", err)
	}
}

// TestSecondRegistryFencesFirst: a registry started on a topic another one
// is writing takes over the writes (the transactional id fences the first);
// the first then refuses writes with 50004, keeps serving reads, and its
// reader follows what the new writer commits.
func TestSecondRegistryFencesFirst(t *testing.T) {
	topic := testenv.Name(t, "_schemas")
	first := start(t, Config{Topic: topic})
	cl1 := srClient(t, first.Registry)
	ctx := context.Background()
	id1, err := cl1.RegisterSchema(ctx, "f-value", avroSchema(appV1), -1, -1)
	if err != nil {
		t.Fatal(err)
	}

	second := start(t, Config{Topic: topic})
	cl2 := srClient(t, second.Registry)
	_, err = cl1.RegisterSchema(ctx, "f-value", avroSchema(appV2), -1, -1)
	msg := responseErr(t, err, codeUnknownLeader)
	if !strings.Contains(msg, "took over") {
		t.Fatalf("fenced write: %s", msg)
	}
	id2, err := cl2.RegisterSchema(ctx, "f-value", avroSchema(appV2), -1, -1)
	if err != nil || id2 == id1 {
		t.Fatalf("write to the new registry: id %d (%v)", id2, err)
	}
	// The fenced registry still reads, and catches up with the new writer.
	deadline := time.Now().Add(30 * time.Second)
	for {
		latest, err := cl1.SchemaByVersion(ctx, "f-value", -1)
		if err == nil && latest.ID == id2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fenced registry does not see version 2: %+v (%v)", latest, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Its failed attempt left nothing behind: exactly two versions.
	if vs, err := cl2.SubjectVersions(ctx, "f-value"); err != nil || len(vs) != 2 {
		t.Fatalf("versions %v (%v)", vs, err)
	}
}
