package peerbench

import "context"

// PostgresEnv is what the CDC workload needs.
type PostgresEnv struct{}

func recoveryWorkload(ctx context.Context, cfg *Config, sides []side) (string, error) { return "", nil }
func cdcWorkload(ctx context.Context, cfg *Config, b *Built) (string, error)          { return "", nil }
