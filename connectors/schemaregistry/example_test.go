package schemaregistry_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"

	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/twmb/franz-go/pkg/sr"
)

// Run the registry against a broker and use it with any Confluent client.
func Example() {
	brk, err := localsvc.StartBroker(localsvc.BrokerOptions{}) // in-memory kfake
	if err != nil {
		log.Fatal(err)
	}
	defer brk.Stop()

	reg, err := schemaregistry.New(schemaregistry.Config{
		Brokers: brk.Addrs(),
		Listen:  "127.0.0.1:0",
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	<-reg.Ready()

	cl, _ := sr.NewClient(sr.URLs(reg.URL()))
	v1 := `{"type":"record","name":"Limit","fields":[{"name":"customer_id","type":"string"},{"name":"score","type":"int"}]}`
	v2 := `{"type":"record","name":"Limit","fields":[{"name":"customer_id","type":"string"}]}`
	cl.SetCompatibility(ctx, sr.SetCompatibility{Level: sr.CompatFull}, "limits-value")
	id, _ := cl.RegisterSchema(ctx, "limits-value", sr.Schema{Schema: v1}, -1, -1)
	fmt.Println("v1 id", id)
	_, err = cl.RegisterSchema(ctx, "limits-value", sr.Schema{Schema: v2}, -1, -1)
	fmt.Println(err.(*sr.ResponseError).StatusCode, err.(*sr.ResponseError).ErrorCode)

	cancel()
	fmt.Println("stopped:", <-done)
	// Output:
	// v1 id 1
	// 409 409
	// stopped: <nil>
}
