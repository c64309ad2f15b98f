// The oracle of the engine's stateful operators: Kafka Streams 4.1.1 running one small topology,
// so that a Rust integration test can feed the same input to the engine and to Kafka Streams and
// compare what both write.
//
// Build and run (infrastructure/kafka-streams/build.sh prints the class path):
//
//   java -cp "$KAFKA_STREAMS_CLASSPATH" StatefulOracle SCENARIO BOOTSTRAP APPLICATION_ID STATE_DIR TOPICS...
//
// Contract:
// - Every topic must exist before the start (the tests create them): a missing input topic fails
//   the run (exit 1). The input topics that a scenario joins must have the same partition count
//   and a key must be in the same partition of both: Kafka Streams 4.1.1 does not check this for
//   these joins (given 2 and 3 partitions, it starts and runs without an error or a warning).
// - Keys and values are UTF-8 strings (Serdes.String) in every input and output topic. Record
//   timestamps are the producer's (default timestamp extractor); outputs carry Kafka Streams'
//   result timestamps. Timestamps far in the past need topics created with retention.ms=-1 (or
//   timestamps near the wall clock): the broker deletes a segment, the active one included, once
//   its newest record is older than the retention (log.retention.hours=24 here), at its next
//   retention check (every 5 minutes), so inputs or outputs stamped e.g. in 2023 can vanish
//   between producing and reading.
// - Configuration: processing.guarantee=at_least_once, commit.interval.ms=100,
//   statestore.cache.max.bytes=0 (no record cache: every update of a KTable is emitted, except
//   where suppress holds it back), auto.offset.reset=earliest, num.stream.threads=1,
//   state.dir=STATE_DIR, replication.factor=1, application.id=APPLICATION_ID (a fresh one per
//   test: it is also the consumer group and the prefix of the internal topics).
// - Prints one line `RUNNING` on stdout (flushed) the first time the client's state becomes
//   RUNNING, i.e. once it has its partitions; nothing else goes to stdout. Logs (slf4j-simple,
//   level warn unless -Dorg.slf4j.simpleLogger.defaultLogLevel says otherwise) go to stderr.
// - Runs until SIGTERM or SIGINT; then closes the client (10 s at most) and exits 0.
// - An uncaught exception in a stream thread (e.g. a missing input topic) shuts the client down,
//   prints the exception on stderr and exits 1. A wrong command line prints the usage on stderr and exits 2.
//
// Scenarios (the TOPICS each takes, then the topology):
//
// 1. windowed-count INPUT OUTPUT
//      stream(INPUT).groupByKey()
//        .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofSeconds(60), Duration.ofSeconds(10)))
//        .count()
//        .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()))
//        .toStream() -> OUTPUT
//    Output: key "<key>@<windowStartMs>" (window start in epoch milliseconds, windows aligned to
//    the epoch), value Long.toString(count): one final record per key and window, emitted once the
//    stream time of that input partition (the largest record timestamp seen on it) reaches
//    windowEnd + 10 s; its timestamp is the largest record timestamp in the window. Records whose
//    window is already closed when they arrive (windowEnd + 10 s <= stream time) are dropped.
//    Stream time is per input partition (per task): records on other partitions do not close
//    a partition's windows.
// 2. windowed-count-eager INPUT OUTPUT
//      the same without suppress: every update is emitted, i.e. one output record per input
//      record that is not dropped, with the running count ("k@0" -> "1", then "k@0" -> "2", ...).
// 3. stream-table-join STREAM TABLE OUTPUT_INNER OUTPUT_LEFT
//      table = builder.table(TABLE)
//      stream(STREAM).join(table, (l, r) -> l + "|" + r) -> OUTPUT_INNER
//      stream(STREAM).leftJoin(table, (l, r) -> l + "|" + (r == null ? "null" : r)) -> OUTPUT_LEFT
//    Output: the stream record's key, value "<streamValue>|<tableValue>" (left join: "|null" when
//    the table has no value for the key at that moment); a stream record without a table match
//    emits nothing on OUTPUT_INNER. Table updates emit nothing. A table tombstone deletes the key.
//    The table is not versioned: a stream record joins the table's value at the moment it is
//    processed, whatever its timestamp (an out-of-order stream record sees the newest value).
// 4. table-aggregate TABLE OUTPUT
//      table(TABLE)   (key: a user, value: a region)
//        .groupBy((user, region) -> KeyValue.pair(region, user))
//        .aggregate(() -> 0L, (region, user, agg) -> agg + 1, (region, user, agg) -> agg - 1,
//                   Materialized with a Long value serde)
//        .toStream() -> OUTPUT
//    Output: key the region, value Long.toString(number of users in it). A user moving from A to
//    B emits A's decremented count and B's incremented one; a user written again with the same
//    region emits that region's unchanged count once; a tombstone for a user emits its old
//    region's decremented count, one for an unknown user emits nothing; a count that drops to 0
//    is emitted as "0" (not a tombstone). Regions go through a repartition topic, so the order
//    between different regions' updates is not the input order.
// 5. table-table-join LEFT RIGHT OUTPUT_INNER OUTPUT_LEFT OUTPUT_OUTER
//      l = table(LEFT), r = table(RIGHT), joiner (lv, rv) -> lv + "|" + rv (null shown as "null")
//      l.join(r, joiner).toStream()      -> OUTPUT_INNER
//      l.leftJoin(r, joiner).toStream()  -> OUTPUT_LEFT
//      l.outerJoin(r, joiner).toStream() -> OUTPUT_OUTER
//    Output: the key, value "<left>|<right>" with "null" for a missing side, or a tombstone (null
//    value). What one update emits (o and n: the updated side's value before and after it, x: the
//    other side's value; an update is emitted even when it writes the value the side already had):
//    - inner: only when x is present: "<n>|<x>" (sides in left|right order), a tombstone when n is
//      null (also when o was null: deleting an absent left key whose right is present emits one).
//    - left, update of LEFT: nothing when o, n and x are all null; else "<n>|<x>" ("|null" when x
//      is missing), a tombstone when n is null.
//      left, update of RIGHT: only when the left value l is present: "<l>|<n>" ("<l>|null" when n
//      is null, i.e. deleting the right side re-emits the left value alone).
//    - outer: nothing when o, n and x are all null; else "<left>|<right>" with "null" for a missing
//      side, a tombstone when both sides are now missing (deleting the left of a joined key emits
//      "null|<right>", deleting the right then emits the tombstone).
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.ValueJoiner;
import org.apache.kafka.streams.kstream.Windowed;

public final class StatefulOracle {
    static final String USAGE = String.join("\n",
            "usage: StatefulOracle SCENARIO BOOTSTRAP APPLICATION_ID STATE_DIR TOPICS...",
            "  windowed-count INPUT OUTPUT",
            "  windowed-count-eager INPUT OUTPUT",
            "  stream-table-join STREAM TABLE OUTPUT_INNER OUTPUT_LEFT",
            "  table-aggregate TABLE OUTPUT",
            "  table-table-join LEFT RIGHT OUTPUT_INNER OUTPUT_LEFT OUTPUT_OUTER");

    private StatefulOracle() {}

    static void usage(String why) {
        System.err.println("StatefulOracle: " + why);
        System.err.println(USAGE);
        System.exit(2);
    }

    static void need(String scenario, List<String> topics, int n) {
        if (topics.size() != n) {
            usage(scenario + " takes " + n + " topics, got " + topics.size());
        }
    }

    /** "<key>@<windowStartMs>" for a windowed key. */
    static String windowedKey(Windowed<String> w) {
        return w.key() + "@" + w.window().start();
    }

    static void windowedCount(StreamsBuilder b, List<String> t, boolean suppress) {
        KTable<Windowed<String>, Long> counts = b.stream(t.get(0), Consumed.with(Serdes.String(), Serdes.String()))
                .groupByKey()
                .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofSeconds(60), Duration.ofSeconds(10)))
                .count();
        if (suppress) {
            counts = counts.suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()));
        }
        counts.toStream()
                .map((w, count) -> KeyValue.pair(windowedKey(w), count == null ? null : Long.toString(count)))
                .to(t.get(1), Produced.with(Serdes.String(), Serdes.String()));
    }

    static void streamTableJoin(StreamsBuilder b, List<String> t) {
        KTable<String, String> table = b.table(t.get(1), Consumed.with(Serdes.String(), Serdes.String()));
        KStream<String, String> stream = b.stream(t.get(0), Consumed.with(Serdes.String(), Serdes.String()));
        stream.join(table, (l, r) -> l + "|" + r)
                .to(t.get(2), Produced.with(Serdes.String(), Serdes.String()));
        stream.leftJoin(table, (l, r) -> l + "|" + (r == null ? "null" : r))
                .to(t.get(3), Produced.with(Serdes.String(), Serdes.String()));
    }

    static void tableAggregate(StreamsBuilder b, List<String> t) {
        b.table(t.get(0), Consumed.with(Serdes.String(), Serdes.String()))
                .groupBy((user, region) -> KeyValue.pair(region, user), Grouped.with(Serdes.String(), Serdes.String()))
                .aggregate(
                        () -> 0L,
                        (region, user, agg) -> agg + 1,
                        (region, user, agg) -> agg - 1,
                        Materialized.with(Serdes.String(), Serdes.Long()))
                .toStream()
                .mapValues(count -> count == null ? null : Long.toString(count))
                .to(t.get(1), Produced.with(Serdes.String(), Serdes.String()));
    }

    static void tableTableJoin(StreamsBuilder b, List<String> t) {
        KTable<String, String> left = b.table(t.get(0), Consumed.with(Serdes.String(), Serdes.String()));
        KTable<String, String> right = b.table(t.get(1), Consumed.with(Serdes.String(), Serdes.String()));
        // String concatenation renders a missing side as "null".
        ValueJoiner<String, String, String> joiner = (l, r) -> l + "|" + r;
        Produced<String, String> produced = Produced.with(Serdes.String(), Serdes.String());
        left.join(right, joiner).toStream().to(t.get(2), produced);
        left.leftJoin(right, joiner).toStream().to(t.get(3), produced);
        left.outerJoin(right, joiner).toStream().to(t.get(4), produced);
    }

    static Topology topology(String scenario, List<String> topics) {
        StreamsBuilder b = new StreamsBuilder();
        switch (scenario) {
            case "windowed-count" -> {
                need(scenario, topics, 2);
                windowedCount(b, topics, true);
            }
            case "windowed-count-eager" -> {
                need(scenario, topics, 2);
                windowedCount(b, topics, false);
            }
            case "stream-table-join" -> {
                need(scenario, topics, 4);
                streamTableJoin(b, topics);
            }
            case "table-aggregate" -> {
                need(scenario, topics, 2);
                tableAggregate(b, topics);
            }
            case "table-table-join" -> {
                need(scenario, topics, 5);
                tableTableJoin(b, topics);
            }
            default -> usage("unknown scenario " + scenario);
        }
        return b.build();
    }

    public static void main(String[] args) throws Exception {
        if (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel") == null) {
            System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        }
        if (args.length < 4) {
            usage("missing arguments");
        }
        String scenario = args[0];
        List<String> topics = Arrays.asList(args).subList(4, args.length);
        Topology topology = topology(scenario, topics);

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[2]);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        props.put(StreamsConfig.STATE_DIR_CONFIG, args[3]);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        KafkaStreams streams = new KafkaStreams(topology, props);
        AtomicBoolean announced = new AtomicBoolean();
        AtomicReference<Throwable> failure = new AtomicReference<>();
        CountDownLatch failed = new CountDownLatch(1);
        // The status the shutdown hook ends the JVM with: 0 after SIGTERM/SIGINT, 1 after a failure.
        AtomicInteger status = new AtomicInteger();

        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING && announced.compareAndSet(false, true)) {
                System.out.println("RUNNING");
                System.out.flush();
            }
            if (now == KafkaStreams.State.ERROR) {
                failed.countDown();
            }
        });
        streams.setUncaughtExceptionHandler(e -> {
            failure.compareAndSet(null, e);
            failed.countDown();
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(10));
            System.out.flush();
            System.err.flush();
            // A signal would otherwise end the JVM with 128 + signal number.
            Runtime.getRuntime().halt(status.get());
        }, "oracle-shutdown"));

        streams.start();
        failed.await();
        Throwable e = failure.get();
        System.err.println("StatefulOracle: " + scenario + " failed: "
                + (e == null ? "the client went into state ERROR" : "uncaught exception in a stream thread"));
        if (e != null) {
            e.printStackTrace(System.err);
        }
        status.set(1);
        System.exit(1);
    }
}
