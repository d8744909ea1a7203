// Package testenv is the integration-test harness: it starts, once per test
// package, a throwaway PostgreSQL with wal_level=logical (from the installed
// server binaries, as an unprivileged user, on a free port in a temporary
// directory), a real redis-server, an embedded kfake broker listening on
// TCP and, for the tests that need the real thing, a single-node Apache
// Kafka broker, and removes them when the package's tests end. Each is
// started on first use only.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
//
// and in tests:
//
//	dsn := testenv.NewDatabase(t)    // a fresh database on the shared cluster
//	rdb := testenv.Redis(t)          // the shared redis-server
//	brk := testenv.Broker(t)         // the shared embedded broker
//	kfk := testenv.Kafka(t)          // the shared Apache Kafka broker
//	own := testenv.NewRedis(t)       // a dedicated server the test may stop
//	cls := testenv.NewKafka(t, localsvc.KafkaOptions{Brokers: 3})
//	                                 // a dedicated cluster to kill nodes of
//	testenv.EachBroker(t, func(t *testing.T, kind string, seeds []string) {
//		// runs as the subtests "kfake" and "apache"
//	})
//
// Apache Kafka runs from jars that scripts/kafka-jars.sh fetches with Maven
// on first use into a cache outside the repository (see localsvc), so it
// needs java (17+) and, until the jars are cached, mvn.
//
// A missing server binary skips the test with an install hint, except when
// CI=true, where it fails: integration tests never silently skip in CI.
package testenv
