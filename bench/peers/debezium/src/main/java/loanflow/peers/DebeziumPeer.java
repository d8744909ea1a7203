package loanflow.peers;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * The Debezium side of the CDC peer benchmark (internal/peerbench): the
 * embedded engine with the PostgreSQL connector (pgoutput) streaming the
 * tables of a publication from an existing slot, each batch of change events
 * written to Kafka by a KafkaProducer with its default settings (acks=all,
 * idempotent) before the batch's offsets are marked processed: at-least-once,
 * Debezium's default. Events are Debezium's JSON envelopes without inline
 * schemas; deletes emit no tombstone, so every change is one record.
 *
 * Arguments are key=value: brokers, app (engine name), host, port, user,
 * db, slot, publication, tables (comma-separated schema.table), prefix
 * (topic prefix), state (offset file directory), commit_ms (offset flush).
 */
public final class DebeziumPeer {
  public static void main(String[] args) throws Exception {
    Map<String, String> a = new HashMap<>();
    for (int i = 0; i < args.length; i++) {
      int eq = args[i].indexOf('=');
      if (eq < 0) {
        if (i == 0) {
          continue; // the workload name, "cdc"
        }
        System.err.println("argument " + args[i] + " is not key=value");
        System.exit(2);
      }
      a.put(args[i].substring(0, eq), args[i].substring(eq + 1));
    }
    Properties pp = new Properties();
    pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, req(a, "brokers"));
    KafkaProducer<String, String> producer = new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer());

    Properties p = new Properties();
    p.setProperty("name", req(a, "app"));
    p.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
    p.setProperty("offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
    p.setProperty("offset.storage.file.filename", req(a, "state") + "/offsets.dat");
    p.setProperty("offset.flush.interval.ms", a.getOrDefault("commit_ms", "1000"));
    p.setProperty("database.hostname", a.getOrDefault("host", "127.0.0.1"));
    p.setProperty("database.port", req(a, "port"));
    p.setProperty("database.user", a.getOrDefault("user", "postgres"));
    p.setProperty("database.password", a.getOrDefault("password", ""));
    p.setProperty("database.dbname", req(a, "db"));
    p.setProperty("topic.prefix", req(a, "prefix"));
    p.setProperty("plugin.name", "pgoutput");
    p.setProperty("slot.name", req(a, "slot"));
    p.setProperty("publication.name", req(a, "publication"));
    p.setProperty("publication.autocreate.mode", "disabled");
    p.setProperty("table.include.list", req(a, "tables"));
    p.setProperty("snapshot.mode", "no_data");
    p.setProperty("tombstones.on.delete", "false");
    p.setProperty("converter.schemas.enable", "false");

    DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class)
        .using(p)
        .notifying((records, committer) -> {
          List<Future<RecordMetadata>> sent = new ArrayList<>(records.size());
          for (ChangeEvent<String, String> r : records) {
            if (r.value() == null) {
              continue;
            }
            sent.add(producer.send(new ProducerRecord<>(r.destination(), r.key(), r.value())));
          }
          for (Future<RecordMetadata> f : sent) {
            try {
              f.get();
            } catch (Exception e) {
              throw new RuntimeException(e);
            }
          }
          for (ChangeEvent<String, String> r : records) {
            committer.markProcessed(r);
          }
          committer.markBatchFinished();
        })
        .using((success, message, error) -> {
          if (!success) {
            System.err.println("debezium peer: engine stopped: " + message);
            if (error != null) {
              error.printStackTrace();
            }
            System.exit(1);
          }
        })
        .build();
    ExecutorService ex = Executors.newSingleThreadExecutor();
    ex.execute(engine);
    System.err.println("debezium peer: started");
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      try {
        engine.close();
      } catch (Exception e) {
        e.printStackTrace();
      }
      producer.close();
    }));
  }

  static String req(Map<String, String> a, String k) {
    String v = a.get(k);
    if (v == null) {
      System.err.println("missing argument " + k + "=");
      System.exit(2);
    }
    return v;
  }
}
