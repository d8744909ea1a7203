package testenv

import "testing"

// Broker kinds: the embedded broker (franz-go's kfake, in process) and a
// real Apache Kafka broker (KRaft, a JVM process).
const (
	Kfake  = "kfake"
	Apache = "apache"
)

// EachBroker runs fn once per Kafka-protocol broker, as the subtests
// "kfake" (the package's shared embedded broker) and "apache" (the
// package's shared single-node Apache Kafka). A test that needs a broker
// of its own (to kill it, or three of them) starts it in fn from kind:
// NewBroker or NewKafka. Without a JDK the apache subtest skips locally
// with an install hint and fails under CI=true, as for the other servers.
func EachBroker(t *testing.T, fn func(t *testing.T, kind string, seeds []string)) {
	t.Helper()
	t.Run(Kfake, func(t *testing.T) { fn(t, Kfake, Broker(t).Addrs()) })
	t.Run(Apache, func(t *testing.T) { fn(t, Apache, Kafka(t).Addrs()) })
}
