// Package conformance runs a foreign consumer over Loanflow's topics, as a
// new user would write one: Node.js with kafkajs (and kafkajs-snappy, for
// the snappy batches franz-go writes) and @kafkajs/confluent-schema-registry,
// the exact versions of node/package-lock.json. It reads every record of
// the given topics (read_committed) up to an end marker in each partition
// and decodes every non-null key and value with the schema registry
// (Confluent framing); a record that does not decode is a failure
// (node/check.js).
//
//	node, dir := conformance.Checker(t)          // npm ci into the cache, once per version
//	conformance.WriteEndMarkers(t, brokers, topics...)
//	res, code, stderr := conformance.Run(t, node, dir, brokers, registryURL, conformance.EndHeader, topics...)
//
// The npm packages are installed with `npm ci` into
// <user cache>/loanflow/conformance-<hash of the files>, outside the
// repository. Without node and npm the test is skipped with an install
// hint, and fails under CI=true (scripts/install-deps.sh installs them).
package conformance
