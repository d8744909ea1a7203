package postgres_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/loanflow/loanflow/connectors/postgres"
)

// A config file names the database, Kafka, the registry and the tables;
// everything else has a default.
func ExampleLoadConfig() {
	dir, _ := os.MkdirTemp("", "cdc-example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "cdc.yaml")
	_ = os.WriteFile(path, []byte(`
database_url: postgres://postgres@127.0.0.1:5432/loanflow
brokers: [127.0.0.1:9092]
schema_registry_url: http://127.0.0.1:8081
tables:
  - table: customers
  - table: public.loans
    mode: upsert
    topic: loans_current
heartbeat_interval: 2s
`), 0o644)
	cfg, err := postgres.LoadConfig(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	cfg = cfg.WithDefaults()
	fmt.Println(cfg.Validate() == nil, cfg.Slot, cfg.HeartbeatInterval, cfg.TransactionalID)
	for _, t := range cfg.Tables {
		fmt.Println(t.Table, t.Mode, t.Topic)
	}
	// Output:
	// true loanflow_cdc 2s loanflow-cdc-loanflow_cdc
	// public.customers envelope cdc.public.customers
	// public.loans upsert loans_current
}
