package loanflow.peers;

import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.EmitStrategy;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;
import org.apache.kafka.streams.state.WindowStore;

/**
 * The Kafka Streams side of the peer benchmarks (internal/peerbench). One
 * program, three workloads, each reading and writing the topics the Go
 * harness names, with the same record formats as the Loanflow side:
 *
 * <ul>
 *   <li>window: count per key in tumbling event-time windows (grace 0,
 *       emitted once when the window closes); output key "KEY@WINDOWSTART",
 *       value the count in decimal.</li>
 *   <li>join: probes (key, decimal limit) joined as of their event time
 *       with a versioned KTable (KIP-914) of the table topic; output key the
 *       probe key, value table limit minus probe limit.</li>
 *   <li>recovery: a count per key in a persistent key-value store; records
 *       whose key starts with "probe" emit "KEY COUNT".</li>
 * </ul>
 *
 * Arguments are key=value: brokers, app, in, out, table, state, threads,
 * commit_ms, window_ms, eos (true: exactly_once_v2, else at_least_once).
 */
public final class KStreamsPeer {
  public static void main(String[] args) throws Exception {
    if (args.length < 1) {
      System.err.println("usage: KStreamsPeer window|join|recovery key=value...");
      System.exit(2);
    }
    Map<String, String> a = new HashMap<>();
    for (int i = 1; i < args.length; i++) {
      int eq = args[i].indexOf('=');
      if (eq < 0) {
        System.err.println("argument " + args[i] + " is not key=value");
        System.exit(2);
      }
      a.put(args[i].substring(0, eq), args[i].substring(eq + 1));
    }
    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, req(a, "app"));
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, req(a, "brokers"));
    p.put(StreamsConfig.STATE_DIR_CONFIG, req(a, "state"));
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(a.getOrDefault("threads", "2")));
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(a.getOrDefault("commit_ms", "1000")));
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
        Boolean.parseBoolean(a.getOrDefault("eos", "true")) ? StreamsConfig.EXACTLY_ONCE_V2 : StreamsConfig.AT_LEAST_ONCE);
    p.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
    p.put(StreamsConfig.producerPrefix("transaction.timeout.ms"), 10000);
    // Static membership, as Loanflow's worker has: a restarted instance
    // takes its partitions back without waiting for a session timeout.
    p.put(StreamsConfig.consumerPrefix("group.instance.id"), req(a, "app"));

    StreamsBuilder b = new StreamsBuilder();
    String workload = args[0];
    switch (workload) {
      case "window" -> window(b, a);
      case "join" -> join(b, a);
      case "recovery" -> recovery(b, a);
      default -> {
        System.err.println("unknown workload " + workload);
        System.exit(2);
      }
    }
    KafkaStreams streams = new KafkaStreams(b.build(), p);
    CountDownLatch done = new CountDownLatch(1);
    streams.setUncaughtExceptionHandler(e -> {
      e.printStackTrace();
      done.countDown();
      return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
    });
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      streams.close(Duration.ofSeconds(10));
      done.countDown();
    }));
    streams.start();
    System.err.println("kstreams peer: started " + workload);
    done.await();
    System.exit(1);
  }

  static String req(Map<String, String> a, String k) {
    String v = a.get(k);
    if (v == null || v.isEmpty()) {
      System.err.println("missing argument " + k + "=");
      System.exit(2);
    }
    return v;
  }

  static void window(StreamsBuilder b, Map<String, String> a) {
    long win = Long.parseLong(a.getOrDefault("window_ms", "10000"));
    b.stream(req(a, "in"), Consumed.with(Serdes.String(), Serdes.ByteArray()))
        .groupByKey(Grouped.with(Serdes.String(), Serdes.ByteArray()))
        .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMillis(win), Duration.ZERO))
        .emitStrategy(EmitStrategy.onWindowClose())
        .count(Materialized.<String, Long, WindowStore<Bytes, byte[]>>as("counts")
            .withKeySerde(Serdes.String()).withValueSerde(Serdes.Long())
            // A window's segment must outlive the record that closes it.
            .withRetention(Duration.ofMillis(win * 6)))
        .toStream()
        .map((wk, c) -> KeyValue.pair(wk.key() + "@" + wk.window().start(), Long.toString(c)))
        .to(req(a, "out"), Produced.with(Serdes.String(), Serdes.String()));
  }

  static void join(StreamsBuilder b, Map<String, String> a) {
    KTable<String, String> table = b.table(req(a, "table"), Consumed.with(Serdes.String(), Serdes.String()),
        Materialized.<String, String>as(Stores.persistentVersionedKeyValueStore("table", Duration.ofHours(1)))
            .withKeySerde(Serdes.String()).withValueSerde(Serdes.String()));
    b.stream(req(a, "in"), Consumed.with(Serdes.String(), Serdes.String()))
        .join(table, (probe, row) -> Long.toString(Long.parseLong(row) - Long.parseLong(probe)))
        .to(req(a, "out"), Produced.with(Serdes.String(), Serdes.String()));
  }

  static void recovery(StreamsBuilder b, Map<String, String> a) {
    b.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore("counts"), Serdes.String(), Serdes.Long()));
    b.stream(req(a, "in"), Consumed.with(Serdes.String(), Serdes.ByteArray()))
        .process(Counter::new, "counts")
        .to(req(a, "out"), Produced.with(Serdes.String(), Serdes.String()));
  }

  static final class Counter implements Processor<String, byte[], String, String> {
    private ProcessorContext<String, String> ctx;
    private KeyValueStore<String, Long> counts;

    @Override
    public void init(ProcessorContext<String, String> ctx) {
      this.ctx = ctx;
      this.counts = ctx.getStateStore("counts");
    }

    @Override
    public void process(Record<String, byte[]> r) {
      Long n = counts.get(r.key());
      long next = n == null ? 1 : n + 1;
      counts.put(r.key(), next);
      if (r.key().startsWith("probe")) {
        ctx.forward(new Record<>(r.key(), r.key() + " " + next, r.timestamp()));
      }
    }
  }
}
