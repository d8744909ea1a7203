package schemaregistry

import (
	"encoding/json"
	"fmt"
)

// The _schemas topic holds JSON keys and values in the format of
// Confluent Schema Registry's KafkaStore, so either registry can read a
// topic the other wrote:
//
//	SCHEMA          {"keytype":"SCHEMA","subject":"s","version":1,"magic":1}
//	                → {"subject":"s","version":1,"id":7,"schema":"...","deleted":false}
//	                  (null value: the version was permanently deleted)
//	CONFIG          {"keytype":"CONFIG","subject":"s"|null,"magic":0}
//	                → {"compatibilityLevel":"FULL"}  (null: subject config removed / global reset)
//	MODE            {"keytype":"MODE","subject":"s"|null,"magic":0} → {"mode":"READONLY"}
//	DELETE_SUBJECT  {"keytype":"DELETE_SUBJECT","subject":"s","magic":0}
//	                → {"subject":"s","version":3}  (versions <= 3 soft-deleted; read only)
//	CLEAR_SUBJECT   {"keytype":"CLEAR_SUBJECT","subject":"s","magic":0}
//	                → {"subject":"s"}  (soft-deleted versions removed; read only)
//	NOOP            {"keytype":"NOOP","magic":0}  (ignored)
//	NOOP            {"keytype":"NOOP","subject":"_loanflow_max_id","magic":0}
//	                → {"maxId":42}: Loanflow's extension, rewritten with
//	                  every permanent delete, so that ids stay unique after
//	                  compaction removed the highest id's records. Its key
//	                  differs from Confluent's NOOP key, so neither registry's
//	                  NOOPs compact the other's away.
//
// Keys are marshaled from structs with a fixed field order, so the same
// logical key is always the same bytes and compaction keeps the last value.

const (
	keySchema        = "SCHEMA"
	keyConfig        = "CONFIG"
	keyMode          = "MODE"
	keyDeleteSubject = "DELETE_SUBJECT"
	keyClearSubject  = "CLEAR_SUBJECT"
	keyNoop          = "NOOP"
)

// storeKey is every key type's union, for reading.
type storeKey struct {
	KeyType string  `json:"keytype"`
	Subject *string `json:"subject"`
	Version int     `json:"version"`
	Magic   int     `json:"magic"`
}

type schemaKey struct {
	KeyType string `json:"keytype"`
	Subject string `json:"subject"`
	Version int    `json:"version"`
	Magic   int    `json:"magic"`
}

type subjectKey struct {
	KeyType string  `json:"keytype"`
	Subject *string `json:"subject"`
	Magic   int     `json:"magic"`
}

type reference struct {
	Name    string `json:"name"`
	Subject string `json:"subject"`
	Version int    `json:"version"`
}

type schemaValue struct {
	Subject    string      `json:"subject"`
	Version    int         `json:"version"`
	ID         int         `json:"id"`
	SchemaType string      `json:"schemaType,omitempty"`
	References []reference `json:"references,omitempty"`
	Schema     string      `json:"schema"`
	Deleted    bool        `json:"deleted"`
}

type configValue struct {
	CompatibilityLevel string `json:"compatibilityLevel"`
}

type modeValue struct {
	Mode string `json:"mode"`
}

type noopValue struct {
	MaxID int `json:"maxId"`
}

type deleteSubjectValue struct {
	Subject string `json:"subject"`
	Version int    `json:"version"`
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("schemaregistry: marshaling %T: %v", v, err)) // plain structs always marshal
	}
	return b
}

func encodeSchemaKey(subject string, version int) []byte {
	return mustJSON(schemaKey{KeyType: keySchema, Subject: subject, Version: version, Magic: 1})
}

// maxIDKey is the key of the id watermark record.
var maxIDKey = encodeSubjectKey(keyNoop, "_loanflow_max_id")

// encodeSubjectKey is a CONFIG or MODE key; subject "" is the global one.
func encodeSubjectKey(keyType, subject string) []byte {
	k := subjectKey{KeyType: keyType}
	if subject != "" {
		k.Subject = &subject
	}
	return mustJSON(k)
}
