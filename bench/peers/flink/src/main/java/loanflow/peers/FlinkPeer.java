package loanflow.peers;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.co.KeyedCoProcessFunction;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;

/**
 * The Flink side of the peer benchmarks (internal/peerbench): the same three
 * workloads, topics and record formats as KStreamsPeer, run in a local
 * MiniCluster (parallelism 2) with the RocksDB state backend, incremental
 * checkpoints every commit_ms and the transactional (exactly-once) KafkaSink.
 *
 * <ul>
 *   <li>window: count per key in tumbling event-time windows, emitted when
 *       the watermark passes the window's end.</li>
 *   <li>join: the DataStream equivalent of an event-time temporal join
 *       (FOR SYSTEM_TIME AS OF): table versions per key in state, each probe
 *       held in state until the watermark passes its time, then joined with
 *       the version valid at that time.</li>
 *   <li>recovery: a count per key; "probe" keys emit "KEY COUNT". Checkpoints
 *       are retained, and restore=DIR starts from one.</li>
 * </ul>
 *
 * Arguments are key=value: brokers, app, in, out, table, state, parallelism,
 * commit_ms, window_ms, restore.
 */
public final class FlinkPeer {
  public static void main(String[] args) throws Exception {
    if (args.length < 1) {
      System.err.println("usage: FlinkPeer window|join|recovery key=value...");
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
    String state = req(a, "state");
    Map<String, String> c = new HashMap<>();
    c.put("state.backend.type", "rocksdb");
    c.put("state.backend.incremental", "true");
    c.put("execution.checkpointing.incremental", "true");
    c.put("state.backend.rocksdb.localdir", state + "/rocksdb");
    c.put("execution.checkpointing.storage", "filesystem");
    c.put("execution.checkpointing.dir", "file://" + state + "/checkpoints");
    c.put("state.checkpoints.dir", "file://" + state + "/checkpoints");
    c.put("execution.checkpointing.interval", a.getOrDefault("commit_ms", "1000") + " ms");
    c.put("execution.checkpointing.mode", "EXACTLY_ONCE");
    c.put("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION");
    c.put("restart-strategy.type", "none");
    c.put("parallelism.default", a.getOrDefault("parallelism", "2"));
    c.put("taskmanager.numberOfTaskSlots", a.getOrDefault("parallelism", "2"));
    c.put("rest.bind-port", "0");
    if (a.containsKey("restore")) {
      c.put("execution.state-recovery.path", a.get("restore"));
      c.put("execution.savepoint.path", a.get("restore"));
    }
    Configuration conf = Configuration.fromMap(c);
    StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(conf);

    String workload = args[0];
    switch (workload) {
      case "window" -> window(env, a);
      case "join" -> join(env, a);
      case "recovery" -> recovery(env, a);
      default -> {
        System.err.println("unknown workload " + workload);
        System.exit(2);
      }
    }
    System.err.println("flink peer: starting " + workload);
    env.execute(req(a, "app"));
  }

  static String req(Map<String, String> a, String k) {
    String v = a.get(k);
    if (v == null || v.isEmpty()) {
      System.err.println("missing argument " + k + "=");
      System.exit(2);
    }
    return v;
  }

  /** Reads (key, decimal value or 0) with the record's timestamp as event time. */
  static DataStream<Tuple2<String, Long>> source(StreamExecutionEnvironment env, Map<String, String> a, String topic, String name) {
    KafkaSource<Tuple2<String, Long>> src = KafkaSource.<Tuple2<String, Long>>builder()
        .setBootstrapServers(req(a, "brokers"))
        .setTopics(topic)
        .setGroupId(req(a, "app"))
        .setStartingOffsets(OffsetsInitializer.earliest())
        .setDeserializer(new KVDeserializer())
        .build();
    return env.fromSource(src, WatermarkStrategy.<Tuple2<String, Long>>forMonotonousTimestamps(), name);
  }

  static final class KVDeserializer implements KafkaRecordDeserializationSchema<Tuple2<String, Long>> {
    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> r, Collector<Tuple2<String, Long>> out) {
      String k = new String(r.key(), StandardCharsets.UTF_8);
      long v = 0;
      if (r.value() != null && r.value().length > 0 && r.value()[0] != 0) {
        try {
          v = Long.parseLong(new String(r.value(), StandardCharsets.UTF_8));
        } catch (NumberFormatException e) {
          v = 0;
        }
      }
      out.collect(Tuple2.of(k, v));
    }

    @Override
    public TypeInformation<Tuple2<String, Long>> getProducedType() {
      return Types.TUPLE(Types.STRING, Types.LONG);
    }
  }

  /** Writes (key, value) pairs exactly-once. */
  static void sink(DataStream<Tuple2<String, String>> s, Map<String, String> a) {
    String out = req(a, "out");
    KafkaSink<Tuple2<String, String>> sink = KafkaSink.<Tuple2<String, String>>builder()
        .setBootstrapServers(req(a, "brokers"))
        .setRecordSerializer((KafkaRecordSerializationSchema<Tuple2<String, String>>) (e, ctx, ts) ->
            new ProducerRecord<>(out, e.f0.getBytes(StandardCharsets.UTF_8), e.f1.getBytes(StandardCharsets.UTF_8)))
        .setDeliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
        .setTransactionalIdPrefix(req(a, "app"))
        // A Flink transaction spans a checkpoint interval plus the
        // checkpoint itself; 10s (the other sides' timeout) aborted it
        // under load with 1M keys of state (InvalidProducerEpochException).
        .setProperty("transaction.timeout.ms", "60000")
        .build();
    s.sinkTo(sink).name("out");
  }

  static void window(StreamExecutionEnvironment env, Map<String, String> a) {
    long win = Long.parseLong(a.getOrDefault("window_ms", "10000"));
    DataStream<Tuple2<String, String>> res = source(env, a, req(a, "in"), "in")
        .keyBy(t -> t.f0, Types.STRING)
        .window(TumblingEventTimeWindows.of(Duration.ofMillis(win)))
        .aggregate(new Count(), new Emit())
        .returns(Types.TUPLE(Types.STRING, Types.STRING));
    sink(res, a);
  }

  static final class Count implements AggregateFunction<Tuple2<String, Long>, Long, Long> {
    @Override public Long createAccumulator() { return 0L; }
    @Override public Long add(Tuple2<String, Long> v, Long acc) { return acc + 1; }
    @Override public Long getResult(Long acc) { return acc; }
    @Override public Long merge(Long x, Long y) { return x + y; }
  }

  static final class Emit extends ProcessWindowFunction<Long, Tuple2<String, String>, String, TimeWindow> {
    @Override
    public void process(String key, Context ctx, Iterable<Long> counts, Collector<Tuple2<String, String>> out) {
      for (Long c : counts) {
        out.collect(Tuple2.of(key + "@" + ctx.window().getStart(), Long.toString(c)));
      }
    }
  }

  static void join(StreamExecutionEnvironment env, Map<String, String> a) {
    DataStream<Tuple2<String, Long>> probes = source(env, a, req(a, "in"), "probes");
    DataStream<Tuple2<String, Long>> table = source(env, a, req(a, "table"), "table");
    DataStream<Tuple2<String, String>> res = probes.keyBy(t -> t.f0, Types.STRING)
        .connect(table.keyBy(t -> t.f0, Types.STRING))
        .process(new TemporalJoin())
        .returns(Types.TUPLE(Types.STRING, Types.STRING));
    sink(res, a);
  }

  /**
   * FOR SYSTEM_TIME AS OF probe time, as Flink's TemporalRowTimeJoinOperator
   * does it: versions (valid-from, value) per key, probes kept until the
   * watermark (the minimum of both inputs') passes their time.
   */
  static final class TemporalJoin extends KeyedCoProcessFunction<String, Tuple2<String, Long>, Tuple2<String, Long>, Tuple2<String, String>> {
    private transient ListState<Tuple2<Long, Long>> versions; // (validFrom, value)
    private transient ListState<Tuple2<Long, Long>> pending;  // (time, probe value)

    @Override
    public void open(org.apache.flink.api.common.functions.OpenContext ctx) {
      versions = getRuntimeContext().getListState(new ListStateDescriptor<>("versions", Types.TUPLE(Types.LONG, Types.LONG)));
      pending = getRuntimeContext().getListState(new ListStateDescriptor<>("pending", Types.TUPLE(Types.LONG, Types.LONG)));
    }

    @Override
    public void processElement1(Tuple2<String, Long> probe, Context ctx, Collector<Tuple2<String, String>> out) throws Exception {
      long ts = ctx.timestamp();
      if (ts <= ctx.timerService().currentWatermark()) {
        out.collect(answer(probe.f0, probe.f1, ts));
        return;
      }
      pending.add(Tuple2.of(ts, probe.f1));
      ctx.timerService().registerEventTimeTimer(ts);
    }

    @Override
    public void processElement2(Tuple2<String, Long> row, Context ctx, Collector<Tuple2<String, String>> out) throws Exception {
      versions.add(Tuple2.of(ctx.timestamp(), row.f1));
    }

    @Override
    public void onTimer(long ts, OnTimerContext ctx, Collector<Tuple2<String, String>> out) throws Exception {
      List<Tuple2<Long, Long>> keep = new ArrayList<>();
      for (Tuple2<Long, Long> p : pending.get()) {
        if (p.f0 <= ts) {
          out.collect(answer(ctx.getCurrentKey(), p.f1, p.f0));
        } else {
          keep.add(p);
        }
      }
      pending.update(keep);
    }

    private Tuple2<String, String> answer(String key, long probe, long ts) throws Exception {
      long best = Long.MIN_VALUE;
      Long value = null;
      for (Tuple2<Long, Long> v : versions.get()) {
        if (v.f0 <= ts && v.f0 >= best) {
          best = v.f0;
          value = v.f1;
        }
      }
      return Tuple2.of(key, Long.toString(value == null ? -probe : value - probe));
    }
  }

  static void recovery(StreamExecutionEnvironment env, Map<String, String> a) {
    DataStream<Tuple2<String, String>> res = source(env, a, req(a, "in"), "in")
        .keyBy(t -> t.f0, Types.STRING)
        .process(new Counter())
        .returns(Types.TUPLE(Types.STRING, Types.STRING));
    sink(res, a);
  }

  static final class Counter extends KeyedProcessFunction<String, Tuple2<String, Long>, Tuple2<String, String>> {
    private transient ValueState<Long> n;

    @Override
    public void open(org.apache.flink.api.common.functions.OpenContext ctx) {
      n = getRuntimeContext().getState(new ValueStateDescriptor<>("n", Types.LONG));
    }

    @Override
    public void processElement(Tuple2<String, Long> v, Context ctx, Collector<Tuple2<String, String>> out) throws Exception {
      Long c = n.value();
      long next = c == null ? 1 : c + 1;
      n.update(next);
      if (v.f0.startsWith("probe")) {
        out.collect(Tuple2.of(v.f0, v.f0 + " " + next));
      }
    }
  }
}
