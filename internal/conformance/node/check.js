'use strict';
// A foreign consumer of Loanflow's CDC topics, as a new user would write
// one: kafkajs reads every record of the given topics from the beginning
// (read_committed) and @kafkajs/confluent-schema-registry decodes every
// non-null key and value (Confluent framing: magic byte 0, schema id, Avro).
// A record whose key or value does not decode is a failure.
//
// Each partition ends at its first record with the header conformance.end
// (or $CONFORMANCE_END_HEADER): the Go test writes one to every partition
// when the reader is done; it is not checked.
//
// Usage: node check.js <brokers,comma-separated> <registry URL> <topic>...
// Prints one JSON object: {topics: {<topic>: {records, keys, values,
// tombstones, nullKeys}}, partitions: {<topic>/<p>: {first, last,
// records}}, failures: [..]}; exits 1 when failures is not
// empty, 2 on an error (no broker, timeout).

const { Kafka, logLevel, CompressionTypes, CompressionCodecs } = require('kafkajs');
const { SchemaRegistry } = require('@kafkajs/confluent-schema-registry');

// kafkajs decodes only gzip by itself; the reader's producer (franz-go)
// compresses batches with snappy, so a kafkajs consumer registers the codec
// its documentation points to.
CompressionCodecs[CompressionTypes.Snappy] = require('kafkajs-snappy');

const END_HEADER = process.env.CONFORMANCE_END_HEADER || 'conformance.end';
const MAX_FAILURES = 50;

async function main() {
  const [brokers, registryURL, ...topics] = process.argv.slice(2);
  if (!brokers || !registryURL || topics.length === 0) {
    console.error('usage: node check.js <brokers> <registry URL> <topic>...');
    process.exit(2);
  }
  const kafka = new Kafka({ clientId: 'conformance', brokers: brokers.split(','), logLevel: logLevel.ERROR });
  const registry = new SchemaRegistry({ host: registryURL });

  const admin = kafka.admin();
  await admin.connect();
  const meta = await admin.fetchTopicMetadata({ topics });
  await admin.disconnect();
  const open = new Set();
  const closed = new Set();
  for (const t of meta.topics) {
    for (const p of t.partitions) open.add(`${t.name}/${p.partitionId}`);
  }

  const stats = {};
  for (const t of topics) stats[t] = { records: 0, keys: 0, values: 0, tombstones: 0, nullKeys: 0 };
  const failures = [];
  const partitions = {}; // topic/partition → first and last offset read, records
  const ends = {}; // topic/partition → offset of its end marker
  const fail = (msg) => {
    if (failures.length < MAX_FAILURES) failures.push(msg);
  };

  const consumer = kafka.consumer({ groupId: `conformance-${process.pid}-${Date.now()}`, readUncommitted: false });
  await consumer.connect();
  for (const topic of topics) await consumer.subscribe({ topic, fromBeginning: true });

  let finish;
  const done = new Promise((resolve) => { finish = resolve; });
  const timer = setTimeout(() => {
    console.error(`conformance: timed out; partitions not finished: ${[...open].join(', ')}`);
    process.exit(2);
  }, Number(process.env.CONFORMANCE_TIMEOUT_MS || 120000));

  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ topic, partition, message }) => {
      const where = `${topic}/${partition}@${message.offset}`;
      if (closed.has(`${topic}/${partition}`)) return; // past its end marker
      if (message.headers && message.headers[END_HEADER] !== undefined) {
        ends[`${topic}/${partition}`] = message.offset;
        open.delete(`${topic}/${partition}`);
        closed.add(`${topic}/${partition}`);
        if (open.size === 0) finish();
        return;
      }
      const s = stats[topic];
      s.records++;
      const pk = `${topic}/${partition}`;
      const ps = partitions[pk] || (partitions[pk] = { first: message.offset, last: message.offset, records: 0 });
      ps.last = message.offset;
      ps.records++;
      if (message.key === null) {
        s.nullKeys++;
      } else {
        try {
          await registry.decode(message.key);
          s.keys++;
        } catch (e) {
          fail(`${where}: key does not decode (${e.message}); key bytes ${message.key.toString('hex').slice(0, 40)}`);
        }
      }
      if (message.value === null) {
        s.tombstones++;
      } else {
        try {
          await registry.decode(message.value);
          s.values++;
        } catch (e) {
          fail(`${where}: value does not decode (${e.message})`);
        }
      }
    },
  });
  if (open.size > 0) await done;
  clearTimeout(timer);
  await consumer.disconnect();
  console.log(JSON.stringify({ topics: stats, partitions, ends, failures }));
  process.exit(failures.length > 0 ? 1 : 0);
}

main().catch((e) => {
  console.error(`conformance: ${e.stack || e}`);
  process.exit(2);
});
