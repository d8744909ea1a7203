package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/api"
	"github.com/loanflow/loanflow/internal/devstack"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/schemas"
)

// The known PII of the scan: a customer the lender onboards and reads, who
// applies, and a new applicant decided by the bureau. Values no other part
// of the system uses, so a hit is a leak.
var scanPeople = []struct{ name, ssn, dob, address string }{
	{"Zebulon Quartermaine", "512-43-8761", "1958-03-27", "77 Marzipan Lane, Duluth"},
	{"Ottoline Brackenbury", "538-19-2647", "1971-11-05", "9 Periwinkle Close, Tulsa"},
}

// scanNeedles are every form the PII could take in a record, a key, a log
// line or a metric: names whole, lower- and upper-case, and each part;
// SSNs with and without dashes; dates of birth as dates and digits;
// addresses whole and their street.
func scanNeedles() []string {
	var out []string
	for _, p := range scanPeople {
		out = append(out, p.name, strings.ToLower(p.name), strings.ToUpper(p.name))
		out = append(out, strings.Fields(p.name)...)
		out = append(out, p.ssn, strings.ReplaceAll(p.ssn, "-", ""))
		out = append(out, p.dob, strings.ReplaceAll(p.dob, "-", ""))
		out = append(out, p.address, strings.Split(p.address, ",")[0])
	}
	return out
}

// TestDevStackPIIScan (issue 9, done-when): the API flows run against
// `loanflow dev`'s whole stack (the API, CDC, the jobs, PostgreSQL, Redis,
// the broker) with known PII: a customer onboarded with name, SSN, date of
// birth and address, its credit profile read with include=pii, an
// application naming it and one of a new applicant (bureau), both decided.
// Then every record of every topic (key, value and headers, raw bytes and
// Avro-decoded), every Redis key and value, every log line of the stack and
// every /metrics page (API, CDC, each job) is scanned for every form of
// that PII: nothing. The negative control plants the PII in a record and a
// Redis value, and the same scan must find exactly those two.
func TestDevStackPIIScan(t *testing.T) {
	if testing.Short() {
		t.Skip("starts every server and part of the system")
	}
	requireServers(t)
	dir := testenv.Dir(t, "piiscan")
	info, stop := startDev(t, dir)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	hc := newHTTPClient(30*time.Second, 4)
	admin, err := readAdminCredentials(info.CredentialsFile)
	if err != nil {
		t.Fatal(err)
	}
	op, err := login(ctx, hc, info.APIURL, admin.ClientID, admin.ClientSecret)
	if err != nil {
		t.Fatal(err)
	}
	if err := ensureLender(ctx, op, api.NewLender{LenderID: "pii-bank", Name: "PII Bank"}); err != nil {
		t.Fatal(err)
	}
	pos, err := newPOSClient(ctx, op, "pii-bank", "pii-pos-"+randomHex(3))
	if err != nil {
		t.Fatal(err)
	}
	known, stranger := scanPeople[0], scanPeople[1]
	if err := op.call(ctx, "POST", "/v1/customers", api.NewCustomer{CustomerID: "c-pii-scan", Name: known.name, SSN: known.ssn,
		DateOfBirth: known.dob, Address: known.address, CreditLimit: "20000.00", RiskTier: "LOW", Score: 780, LenderID: "pii-bank"}, nil); err != nil {
		t.Fatal(err)
	}
	var prof map[string]any
	if err := pos.call(ctx, "GET", "/v1/credit-profiles/c-pii-scan?purpose=ACCOUNT_REVIEW&include=pii", nil, &prof); err != nil {
		t.Fatal(err)
	}
	cust := "c-pii-scan"
	for i, a := range []struct {
		customer *string
		p        struct{ name, ssn, dob, address string }
	}{{&cust, known}, {nil, stranger}} {
		body := map[string]any{"application_id": fmt.Sprintf("pii-app-%d", i), "pos_terminal_id": "pos-pii-1", "amount": "900.00", "currency": "USD",
			"applicant": map[string]string{"name": a.p.name, "ssn": a.p.ssn, "date_of_birth": a.p.dob, "address": a.p.address}}
		if a.customer != nil {
			body["customer_id"] = *a.customer
		}
		if err := pos.call(ctx, "POST", "/v1/loan-applications", body, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := pos.awaitDecision(ctx, fmt.Sprintf("pii-app-%d", i), time.Minute); err != nil {
			t.Fatalf("decision of pii-app-%d: %v", i, err)
		}
	}
	sc := newPIIScanner(t, info)
	defer sc.close()
	// CDC carried the customer to customer_360 (the scan then covers what
	// it streams).
	for !sc.topicHas(ctx, "customer_360", "c-pii-scan") {
		if ctx.Err() != nil {
			t.Fatal("the customer never reached customer_360")
		}
		time.Sleep(200 * time.Millisecond)
	}
	found, stats := sc.scan(ctx)
	t.Logf("PII scan: %s", stats)
	if len(found) > 0 {
		t.Errorf("PII found in %d places:\n%s", len(found), strings.Join(found, "\n"))
	}

	// Negative control: plant the PII where the scan looks.
	cl, err := kgo.NewClient(kgo.SeedBrokers(info.Brokers...), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if resp, err := kadm.NewClient(cl).CreateTopic(ctx, 1, -1, nil, "pii_scan_control"); err != nil || resp.Err != nil {
		t.Fatalf("creating pii_scan_control: %v %v", err, resp.Err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "pii_scan_control", Value: []byte(`{"note":"applicant ` + strings.ToLower(known.name) + `"}`)}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	for {
		tl, err := kadm.NewClient(sc.cl).ListTopicsWithInternal(ctx)
		if err == nil && tl.Has("pii_scan_control") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("pii_scan_control never listed: %v %v", tl.Names(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := sc.redis.Set(ctx, "pii:control", strings.ReplaceAll(stranger.ssn, "-", ""), 0).Err(); err != nil {
		t.Fatal(err)
	}
	found, stats = sc.scan(ctx)
	where := map[string]bool{}
	for _, f := range found {
		where[strings.SplitN(f, " => ", 2)[0]] = true
	}
	if len(where) != 2 || !where["topic pii_scan_control/0@0 value"] || !where["redis pii:control"] {
		t.Fatalf("control (%s): the planted PII was found in %v, want the planted record and Redis value:\n%s", stats, where, strings.Join(found, "\n"))
	}
}

type piiScanner struct {
	t     *testing.T
	info  devstack.Info
	cl    *kgo.Client
	redis *redis.Client
	dec   *avroDecoder
}

func newPIIScanner(t *testing.T, info devstack.Info) *piiScanner {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(info.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	opts, err := redis.ParseURL(info.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{info.SchemaRegistryURL}})
	if err != nil {
		t.Fatal(err)
	}
	return &piiScanner{t: t, info: info, cl: cl, redis: redis.NewClient(opts), dec: &avroDecoder{reg: reg, schemas: map[int]*avro.Schema{}}}
}

func (sc *piiScanner) close() {
	sc.cl.Close()
	_ = sc.redis.Close()
}

// records calls fn with every record of topic up to its current end, read
// uncommitted (aborted transactions' records included) with the
// transaction markers.
func (sc *piiScanner) records(ctx context.Context, topic string, fn func(*kgo.Record)) {
	sc.t.Helper()
	adm := kadm.NewClient(sc.cl)
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		sc.t.Fatalf("end offsets of %s: %v", topic, err)
	}
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		sc.t.Fatalf("start offsets of %s: %v", topic, err)
	}
	offsets := map[string]map[int32]kgo.Offset{topic: {}}
	remaining := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if s, ok := starts.Lookup(topic, o.Partition); ok && o.Offset > s.Offset {
			remaining[o.Partition] = o.Offset
			offsets[topic][o.Partition] = kgo.NewOffset().At(s.Offset)
		}
	})
	if len(remaining) == 0 {
		return
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(sc.info.Brokers...), kgo.ConsumePartitions(offsets),
		kgo.FetchIsolationLevel(kgo.ReadUncommitted()),
		// Transaction markers take offsets too: keep them, so the end
		// offset is reached.
		kgo.KeepControlRecords())
	if err != nil {
		sc.t.Fatal(err)
	}
	defer cl.Close()
	for len(remaining) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			sc.t.Fatalf("reading %s: %v (left: %v)", topic, ctx.Err(), remaining)
		}
		fs.EachRecord(func(r *kgo.Record) {
			fn(r)
			if r.Offset+1 >= remaining[r.Partition] {
				delete(remaining, r.Partition)
			}
		})
	}
}

func (sc *piiScanner) topicHas(ctx context.Context, topic, s string) bool {
	found := false
	sc.records(ctx, topic, func(r *kgo.Record) {
		if strings.Contains(string(r.Key), s) || strings.Contains(string(r.Value), s) {
			found = true
		}
	})
	return found
}

// scan returns where any needle was found ("place: needle") and counts.
func (sc *piiScanner) scan(ctx context.Context) ([]string, string) {
	sc.t.Helper()
	needles := scanNeedles()
	var found []string
	check := func(where string, b []byte) {
		for _, n := range needles {
			if strings.Contains(string(b), n) {
				found = append(found, where+" => "+n)
			}
		}
	}
	topics, err := kadm.NewClient(sc.cl).ListTopicsWithInternal(ctx)
	if err != nil {
		sc.t.Fatal(err)
	}
	names := topics.Names()
	sort.Strings(names)
	records := 0
	for _, topic := range names {
		sc.records(ctx, topic, func(r *kgo.Record) {
			records++
			at := fmt.Sprintf("topic %s/%d@%d", r.Topic, r.Partition, r.Offset)
			check(at+" key", r.Key)
			check(at+" value", r.Value)
			for _, h := range r.Headers {
				check(at+" header "+h.Key, append([]byte(h.Key+"="), h.Value...))
			}
			for part, b := range map[string][]byte{"key": r.Key, "value": r.Value} {
				if len(b) > 5 && b[0] == 0 {
					if js, _ := sc.dec.decode(ctx, b); js != nil {
						check(at+" decoded "+part, js)
					}
				}
			}
		})
	}
	keys, err := sc.redis.Keys(ctx, "*").Result()
	if err != nil {
		sc.t.Fatal(err)
	}
	for _, k := range keys {
		check("redis "+k, []byte(k))
		if v, err := sc.redis.Dump(ctx, k).Result(); err == nil {
			check("redis "+k, []byte(v))
		}
		if v, err := sc.redis.Get(ctx, k).Result(); err == nil {
			check("redis "+k, []byte(v))
		}
	}
	logs, err := os.ReadFile(filepath.Join(sc.info.Dir, "test.log"))
	if err != nil || len(logs) == 0 {
		sc.t.Fatalf("the stack's log: %d bytes, %v", len(logs), err)
	}
	check("logs", logs)
	pages := map[string]string{"api": sc.info.APIURL + "/metrics", "cdc": sc.info.CDCMetricsURL}
	for j, addr := range sc.info.Workers {
		pages[j] = "http://" + addr + "/metrics"
	}
	metricBytes := 0
	for name, u := range pages {
		resp, err := http.Get(u)
		if err != nil {
			sc.t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "loanflow_") {
			sc.t.Fatalf("metrics of %s (%s): %s", name, u, resp.Status)
		}
		metricBytes += len(b)
		check("metrics "+name, b)
	}
	return found, fmt.Sprintf("%d topics, %d records, %d Redis keys, %d log bytes, %d metrics bytes from %d endpoints",
		len(names), records, len(keys), len(logs), metricBytes, len(pages))
}
