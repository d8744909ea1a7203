// Package testenv is the integration-test harness: it starts, once per test
// package, a throwaway PostgreSQL with wal_level=logical (from the installed
// server binaries, as an unprivileged user, on a free port in a temporary
// directory), a real redis-server and an embedded kfake broker listening on
// TCP, and removes them when the package's tests end.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
//
// and in tests:
//
//	dsn := testenv.NewDatabase(t)    // a fresh database on the shared cluster
//	rdb := testenv.Redis(t)          // the shared redis-server
//	brk := testenv.Broker(t)         // the shared broker
//	own := testenv.NewRedis(t)       // a dedicated server the test may stop
//
// A missing server binary skips the test with an install hint, except when
// CI=true, where it fails: integration tests never silently skip in CI.
package testenv
