package peerbench

import "context"

func recoveryWorkload(ctx context.Context, cfg *Config, sides []side) (string, error) { return "", nil }
