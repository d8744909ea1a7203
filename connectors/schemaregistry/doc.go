// Package schemaregistry is Loanflow's embedded schema registry: an HTTP
// server speaking Confluent Schema Registry's REST API (so any Confluent
// client, franz-go's sr.Client and riferrei/srclient work against it) that
// stores its state in a compacted Kafka topic in Confluent's own record
// format, so it reloads everything on restart, and a topic it wrote can be
// served by Confluent's registry and vice versa.
//
// # API
//
//	GET    /subjects                                   ?deleted=true ?subjectPrefix=
//	POST   /subjects/{subject}                          look a schema up
//	DELETE /subjects/{subject}                          ?permanent=true
//	GET    /subjects/{subject}/versions                 ?deleted=true
//	POST   /subjects/{subject}/versions                 register → {"id": N}
//	GET    /subjects/{subject}/versions/{v|latest}      (/schema for the raw text)
//	DELETE /subjects/{subject}/versions/{v|latest}      ?permanent=true
//	GET    /schemas/ids/{id}                            (/schema, /subjects, /versions)
//	GET    /schemas, /schemas/types, /contexts
//	GET|PUT|DELETE /config, /config/{subject}           compatibility levels
//	GET|PUT|DELETE /mode, /mode/{subject}               READWRITE, READONLY, IMPORT
//	POST   /compatibility/subjects/{subject}/versions[/{v|latest}]  ?verbose=true
//
// Responses use application/vnd.schemaregistry.v1+json; errors are
// {"error_code": 40401, "message": "Subject 'x' not found."} with
// Confluent's codes (40401-40409, 409, 42201-42209, 50001, 50002).
//
// # Semantics
//
// Only AVRO schemas are accepted (no references). Schemas are global: the
// same schema (equal JSON after normalizing whitespace and key order)
// registered under any subject gets the same id; registering a schema a
// subject already holds returns its id and creates no version. A new
// version must be compatible with the subject's existing versions under the
// subject's level (NONE, BACKWARD, FORWARD, FULL and the _TRANSITIVE
// variants; default BACKWARD, or Config.DefaultCompatibility, or what PUT
// /config set), checked with real Avro schema resolution (twmb/avro): an
// incompatible schema is a 409 whose message names the offending field,
// e.g. "The field 'score' at path 'score' in the old schema has no default
// value and is missing in the new schema". Note what each level allows:
// BACKWARD (new readers read old data) accepts removing a field and refuses
// adding one without a default; FORWARD (old readers read new data) is the
// reverse; FULL requires both, so only fields with defaults come and go.
//
// Soft deletes hide versions from listings but keep their ids readable
// (consumers can still decode old records); a permanent delete needs a soft
// delete first and removes the version (and its id once no version uses it).
// Version numbers keep increasing across soft deletes.
//
// # Storage
//
// Every change is one record in the storage topic (default _schemas, one
// partition, cleanup.policy=compact; created if missing, and refused if it
// exists uncompacted). Keys and values are Confluent's JSON (keytype
// SCHEMA, CONFIG, MODE, DELETE_SUBJECT, CLEAR_SUBJECT, NOOP; see records.go).
// The in-memory state is derived only by reading the topic's committed
// records in order, so a restarted registry and a running one go through
// the same code. Every write is one Kafka transaction (a permanent subject
// delete, several records, is atomic; a write cut short by a crash is
// never seen) and returns once the reader has applied it, so the answer
// reflects the new state. Writes are serialized.
//
// One registry writes a topic at a time: the transactional id
// (Config.TransactionalID, default loanflow-schema-registry-<topic>)
// fences the previous writer when a new registry starts. The fenced one
// answers writes with 50004 and keeps serving reads, following the new
// writer. Ids are never reused: a watermark record keeps the highest id
// across compaction of permanently deleted schemas.
//
// # Goroutines and errors
//
// Run owns everything it starts: the topic reader, the HTTP server and its
// connections; it returns after all of them stopped. Locks: writeMu
// serializes writers and is taken before mu, which guards the state; the
// reader goroutine is the state's only writer. Config.Validate and
// New report configuration errors; Run returns an error when Kafka is
// unreachable, the topic is not compacted (ErrTopicNotCompacted) or the
// listen address is taken. A record of the topic that cannot be read is
// logged and skipped, not fatal.
package schemaregistry
