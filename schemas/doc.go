// Package schemas holds Loanflow's Avro schemas (the .avsc files of
// schemas/avro, embedded), the Go types that mirror them, and the Avro serde
// with the Confluent wire format that every producer and consumer of the
// Kafka topics uses.
//
// # Records
//
// One .avsc file per record, in schemas/avro, and one Go type per record in
// this package, kept in step by a test:
//
//	LoanApplication   loan_applications   loan_application.avsc
//	Customer360       customer_360        customer_360.avsc (compacted, key customer_id)
//	LoanDecision      loan_decisions      loan_decision.avsc
//	LoanUpdatedEvent  (portfolio job)     loan_updated_event.avsc
//	PortfolioMetric   portfolio_metrics   portfolio_metric.avsc
//	Change[R]         cdc.<schema>.<table> cdc_envelope.avsc + cdc_source.avsc
//
// Money is Decimal, an exact fixed-point number (decimal(18,2) in the
// schemas, so database columns should be numeric(18,2)); it never rounds,
// and an amount with more decimals than the schema allows is an encode
// error. Timestamps are timestamp-millis (time.Time, UTC). Optional fields
// are ["null", T] unions with default null, pointers in Go. PII never
// appears in plaintext: LoanApplication carries applicant_details as
// ciphertext and ssn_index as a blind index.
//
// Each record has a Spec (LoanApplicationSpec, ...) naming its topic, its
// subject (TopicNameStrategy: "<topic>-value") and its schema text.
//
// # Serde
//
// A Serde[T] implements pipeline.Codec[T]: Encode writes magic byte 0, the
// 4-byte big-endian schema id and the Avro binary; Decode reads them back.
// Create one per record type and share it; it is safe for concurrent use:
//
//	cl, err := schemas.NewClient(schemas.ClientConfig{URLs: []string{"http://127.0.0.1:8081"}})
//	apps, err := schemas.LoanApplicationSpec.NewSerde(ctx, cl)
//	// or: schemas.NewSerde[schemas.LoanApplication](ctx, cl, "loan_applications-value", schemas.LoanApplicationSchema)
//	rec.Value, err = apps.Encode(nil, app)
//	app, err = apps.Decode(rec.Value)
//
// NewSerde registers the schema under the subject (the same schema
// registered twice keeps its id) unless ReadOnly is given, in which case it
// only looks the schema up. Decoding a record written with another schema id
// fetches that writer schema from the registry once (cached per id, bounded)
// and resolves it to the serde's schema, so a consumer reads records of
// older and newer compatible versions. Records larger than MaxRecordBytes
// (default 1 MiB) are refused before decoding; below it the decoder
// allocates in proportion to the input, whatever lengths a corrupt record
// claims.
//
// The dynamic path, for schemas built at run time (the CDC reader): use
// NewSerde[map[string]any]. Values are maps keyed by field name; decimals
// decode as *big.Rat (any precision) and encode from *big.Rat, Decimal or a
// numeric string; nested records are maps; unions take the bare value (nil
// for null). CDCEnvelopeSchema and CDCKeySchema build a table's envelope and
// key schemas from its columns, as avro.SchemaField values built from
// PostgreSQL relation metadata:
//
//	env, err := schemas.CDCEnvelopeSchema("cdc.public.loans", columns)
//	serde, err := schemas.NewSerde[map[string]any](ctx, cl, schemas.ValueSubject("cdc.public.loans"), env.String())
//
// A consumer that has no reader schema (a job that only needs a CDC record's
// key, or any field of whatever version arrives) uses
// NewWriterSchemaDecoder[map[string]any]: each record decodes with its own
// writer schema.
//
// A new Relation message means a new envelope schema and a new serde; its
// registration either gets a new version or fails with ErrIncompatible
// (the registry's message names the field).
//
// Customer360FromRows and LoanUpdatedEventFromChange map CDC rows of the
// database tables (customers, credit_profiles, loans) onto the records, for
// the jobs that produce customer_360 and LoanUpdatedEvent: the one place
// where the table columns and the record fields meet.
//
// # Errors
//
// Every error is an *Error whose Kind is one of ErrBadMagic, ErrTruncated,
// ErrTooLarge, ErrUnknownSchemaID, ErrCorrupt, ErrIncompatible,
// ErrInvalidSchema, ErrInvalidValue, ErrNotRegistered or
// ErrRegistryUnavailable, with the subject and schema id involved. Test the
// kind with errors.Is. IsRetryable (true only for ErrRegistryUnavailable)
// decides between retrying and sending the record to the dead-letter topic:
// a record that cannot be decoded is never retried, and a registry outage
// never dead-letters a good record. Retryable errors also match
// pipeline.ErrRetryable, so a job's source fails its task (and restarts
// from the checkpoint) instead of dead-lettering. Decode never panics.
//
// # Goroutines and resources
//
// The package starts no goroutines. A Client holds an HTTP client and two
// bounded caches (schema texts by id, ids recently found unknown); a Serde
// holds a bounded cache of resolved writer schemas. Neither needs closing.
package schemas
