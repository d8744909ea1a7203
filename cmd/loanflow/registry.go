package main

import (
	"log/slog"
	"os"
	"time"

	"github.com/loanflow/loanflow/connectors/schemaregistry"
	"github.com/spf13/cobra"
)

func init() { addCommand(newRegistryCmd) }

func newRegistryCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "registry",
		Short: "The embedded schema registry (Confluent REST API, schemas stored in Kafka)",
	}
	cmd.AddCommand(newRegistryRunCmd())
	return cmd
}

func newRegistryRunCmd() *cobra.Command {
	var cfg schemaregistry.Config
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the schema registry until interrupted",
		Long: `Run serves the Confluent Schema Registry REST API on --listen and stores
schemas in the compacted Kafka topic --topic (created if missing), reloading
them from it on start.

  loanflow registry run --brokers 127.0.0.1:9092 --listen 127.0.0.1:8081`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
			r, err := schemaregistry.New(cfg)
			if err != nil {
				return err
			}
			return r.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&cfg.Brokers, "brokers", []string{"127.0.0.1:9092"}, "Kafka seed brokers, host:port, comma-separated")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:8081", "HTTP listen address")
	f.StringVar(&cfg.Topic, "topic", "_schemas", "compacted Kafka topic storing the schemas")
	f.StringVar(&cfg.DefaultCompatibility, "compatibility", schemaregistry.CompatBackward,
		"default compatibility level: NONE, BACKWARD, FORWARD, FULL, or *_TRANSITIVE")
	f.IntVar(&cfg.ReplicationFactor, "replication-factor", -1, "replication factor of a topic the registry creates (-1: broker default)")
	f.IntVar(&cfg.MaxSchemaBytes, "max-schema-bytes", 1<<20, "largest schema accepted, in bytes")
	f.DurationVar(&cfg.WriteTimeout, "write-timeout", 30*time.Second, "time limit of one write to the topic")
	return cmd
}
