package jobs

import (
	"errors"
	"strings"
	"testing"
)

// TestJobsBuildOffline: every registered job builds and plans without any
// server when Env.Offline is set, and without it names what is missing.
func TestJobsBuildOffline(t *testing.T) {
	names := []string{}
	for _, j := range List() {
		names = append(names, j.Name)
		b, err := Builder(j.Name, Env{Offline: true})
		if err != nil {
			t.Fatalf("%s: %v", j.Name, err)
		}
		plan, err := b.Plan()
		if err != nil {
			t.Fatalf("%s: %v", j.Name, err)
		}
		if !strings.Contains(plan.Describe(), "job "+j.Name) {
			t.Errorf("%s: plan %s", j.Name, plan.Describe())
		}
		if j.Name == "decisions" {
			backed := false
			for _, sub := range plan.Subtopologies {
				for _, ts := range sub.TableSources {
					backed = backed || ts == "customer_360"
				}
			}
			if !backed {
				t.Errorf("customer_360 is not the join table's changelog:\n%s", plan.Describe())
			}
		}
		if _, err := Builder(j.Name, Env{}); !errors.Is(err, ErrEnv) || !strings.Contains(err.Error(), "--brokers") {
			t.Errorf("%s without servers: %v", j.Name, err)
		}
	}
	if strings.Join(names, ",") != "cache-invalidation,decisions,portfolio" {
		t.Fatalf("registered jobs: %v", names)
	}
}
