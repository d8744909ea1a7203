// Package benchreport runs every benchmark of the project against servers
// it starts on this machine (PostgreSQL, redis-server, the embedded broker
// and schema registry) and renders the report written to BENCHMARKS.md:
// the engine (internal/enginebench), the Avro serde (schemas/avrobench),
// CDC (connectors/postgres) and the API (api/apibench), each figure beside
// a baseline measured in the same run; with Config.Peers, Loanflow beside
// Kafka Streams, Flink and Debezium on a real Apache Kafka broker
// (internal/peerbench).
package benchreport
