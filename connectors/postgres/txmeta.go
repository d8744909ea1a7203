package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/twmb/avro"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/schemas"
)

// Transaction metadata (Config.ProvideTransactionMetadata), as Debezium's
// transaction topic: a BEGIN record before the first change record of a
// PostgreSQL transaction and an END record with the number of change
// records per table after its last, in the transaction topic; every change
// record of an envelope topic carries a transaction block {id,
// total_order, data_collection_order}. The records of one PostgreSQL
// transaction are committed in one Kafka transaction, or, when it is
// split (txn_max_records, txn_max_bytes), in consecutive ones whose
// number the END record gives in kafka_transactions: a read_committed
// consumer that sees an END has every record it counts.

// Schemas of the transaction topic: Debezium's TransactionMetadataKey and
// TransactionMetadataValue (SchemaFactory) as AvroConverter writes them,
// plus kafka_transactions.
const (
	txKeySchema   = `{"type":"record","name":"TransactionMetadataKey","namespace":"io.debezium.connector.common","fields":[{"name":"id","type":"string"}],"connect.version":1,"connect.name":"io.debezium.connector.common.TransactionMetadataKey"}`
	txValueSchema = `{"type":"record","name":"TransactionMetadataValue","namespace":"io.debezium.connector.common","fields":[` +
		`{"name":"status","type":"string"},{"name":"id","type":"string"},` +
		`{"name":"event_count","type":["null","long"],"default":null},` +
		`{"name":"data_collections","type":["null",{"type":"array","items":["null",{"type":"record","name":"collection","namespace":"event","fields":[{"name":"data_collection","type":"string"},{"name":"event_count","type":"long"}],"connect.version":1,"connect.name":"event.collection"}]}],"default":null},` +
		`{"name":"ts_ms","type":"long"},` +
		`{"name":"kafka_transactions","type":["null","int"],"default":null,"doc":"Loanflow: the Kafka transactions the PostgreSQL transaction was written in (END only); more than 1 when it was split (txn_max_records, txn_max_bytes)."}` +
		`],"connect.version":1,"connect.name":"io.debezium.connector.common.TransactionMetadataValue"}`
	// txBlockField is the envelope's transaction field (Debezium's
	// event.block, optional).
	txBlockField = `{"name":"transaction","type":["null",{"type":"record","name":"block","namespace":"event","fields":[{"name":"id","type":"string"},{"name":"total_order","type":"long"},{"name":"data_collection_order","type":"long"}],"connect.version":1,"connect.name":"event.block"}],"default":null}`
)

// TxnProgress is the transaction metadata of a PostgreSQL transaction
// split over Kafka transactions, kept in the position so a restarted
// reader that resumes inside it counts on.
type TxnProgress struct {
	// ID of the transaction, Begun once its BEGIN record is in Kafka.
	ID    string `json:"id"`
	Begun bool   `json:"begun"`
	// Events are the change records written per table, in first-seen
	// order of Order; Total their sum.
	Events map[string]int64 `json:"events,omitempty"`
	Order  []string         `json:"order,omitempty"`
	Total  int64            `json:"total"`
	// Parts is the number of Kafka transactions committed with its records.
	Parts int `json:"parts"`
}

func (p *TxnProgress) clone() *TxnProgress {
	if p == nil {
		return nil
	}
	c := *p
	c.Events = maps.Clone(p.Events)
	c.Order = slices.Clone(p.Order)
	return &c
}

// txMeta is the writer's transaction metadata state (nil when disabled).
type txMeta struct {
	topic      string
	key, value *avro.Schema
	keyID      int
	valueID    int
	cur        TxnProgress
	at         time.Time // the transaction's commit time
}

// txID is Debezium's PostgreSQL transaction id: "<xid>:<lsn>" (here the
// commit LSN, as a decimal).
func txID(xid uint32, commitLSN uint64) string {
	return strconv.FormatUint(uint64(xid), 10) + ":" + strconv.FormatUint(commitLSN, 10)
}

// txBegin starts a PostgreSQL transaction; a transaction the position
// shows partly written continues its counts.
func (w *writer) txBegin(it *item) {
	if w.tx == nil {
		return
	}
	w.tx.cur, w.tx.at = TxnProgress{ID: txID(it.xid, uint64(it.lsn)), Events: map[string]int64{}}, it.at
	if w.skip > 0 && w.resume.Txn != nil && w.resume.LSN == it.lsn {
		w.tx.cur = *w.resume.Txn.clone()
		if w.tx.cur.Events == nil {
			w.tx.cur.Events = map[string]int64{}
		}
	}
}

// txBlock is the transaction block of a change record about to be written
// (nil for snapshot reads and upsert topics), writing the BEGIN record
// first if this is the transaction's first.
func (w *writer) txBlock(ctx context.Context, ev *event) (map[string]any, error) {
	if w.tx == nil || ev.op == opRead || !w.inPG || ev.t.route.mode != ModeEnvelope {
		return nil, nil
	}
	if !w.tx.cur.Begun {
		if err := w.txRecord(ctx, "BEGIN"); err != nil {
			return nil, err
		}
		w.tx.cur.Begun = true
	}
	q := ev.t.qualified()
	return map[string]any{"id": w.tx.cur.ID, "total_order": w.tx.cur.Total + 1, "data_collection_order": w.tx.cur.Events[q] + 1}, nil
}

// txCount counts a change record written with a block.
func (w *writer) txCount(ev *event) {
	if ev.txBlock == nil {
		return
	}
	q := ev.t.qualified()
	if _, ok := w.tx.cur.Events[q]; !ok {
		w.tx.cur.Order = append(w.tx.cur.Order, q)
	}
	w.tx.cur.Events[q]++
	w.tx.cur.Total++
}

// txSplit notes a Kafka commit inside the transaction and returns the
// progress to keep in the position.
func (w *writer) txSplit() *TxnProgress {
	if w.tx == nil {
		return nil
	}
	w.tx.cur.Parts++
	return w.tx.cur.clone()
}

// txEnd writes the END record of a transaction that wrote a BEGIN.
func (w *writer) txEnd(ctx context.Context) error {
	if w.tx == nil || !w.tx.cur.Begun {
		return nil
	}
	err := w.txRecord(ctx, "END")
	w.tx.cur = TxnProgress{}
	return err
}

// txRecord writes a BEGIN or END record of the current transaction.
func (w *writer) txRecord(ctx context.Context, status string) error {
	tx := w.tx
	if tx.key == nil {
		if _, err := ensureTopic(ctx, w.adm, tx.topic, 1, int16(w.cfg.TopicReplicationFactor), false); err != nil {
			return err
		}
		var err error
		if tx.key, tx.keyID, err = register(ctx, w.reg, schemas.KeySubject(tx.topic), avro.MustParse(txKeySchema)); err != nil {
			return err
		}
		if tx.value, tx.valueID, err = register(ctx, w.reg, schemas.ValueSubject(tx.topic), avro.MustParse(txValueSchema)); err != nil {
			tx.key = nil
			return err
		}
	}
	cur := &tx.cur
	v := map[string]any{"status": status, "id": cur.ID, "ts_ms": tx.at.UnixMilli(), "event_count": nil, "data_collections": nil, "kafka_transactions": nil}
	if status == "END" {
		cols := make([]any, 0, len(cur.Order))
		for _, q := range cur.Order {
			cols = append(cols, map[string]any{"data_collection": q, "event_count": cur.Events[q]})
		}
		v["event_count"], v["data_collections"], v["kafka_transactions"] = cur.Total, cols, int32(cur.Parts+1)
	}
	key, err := tx.key.AppendEncode(frame(nil, tx.keyID), map[string]any{"id": cur.ID})
	if err != nil {
		return fmt.Errorf("%w: transaction key: %v", ErrSchema, err)
	}
	val, err := tx.value.AppendEncode(frame(nil, tx.valueID), v)
	if err != nil {
		return fmt.Errorf("%w: transaction %s record: %v", ErrSchema, status, err)
	}
	return w.produce(ctx, &kgo.Record{Topic: tx.topic, Partition: 0, Context: manualPartition, Key: key, Value: val, Timestamp: tx.at})
}

// withTxBlock adds the transaction field to an envelope schema.
func withTxBlock(env *avro.Schema) (*avro.Schema, error) {
	var m map[string]any
	if err := jsonUnmarshalString(env.String(), &m); err != nil {
		return nil, err
	}
	var f map[string]any
	if err := jsonUnmarshalString(txBlockField, &f); err != nil {
		return nil, err
	}
	m["fields"] = append(m["fields"].([]any), f)
	return parseJSON(m)
}

func jsonUnmarshalString(s string, v any) error { return json.Unmarshal([]byte(s), v) }
