// Kafka Streams contender of the stateful benchmark (`infrastructure/bench.sh stateful`).
//
//   KAFKA_BOOTSTRAP=127.0.0.1:9092 java -Xmx1g -cp "$(infrastructure/kafka-streams/build.sh)" \
//       StatefulBench SCENARIO INPUT OUTPUT APPLICATION_ID THREADS
//
// INPUT holds String keys and String values (`bench-harness produce-keyed`). Scenarios:
// - count:          stream(INPUT).groupByKey().count().toStream() -> OUTPUT
// - windowed-count: stream(INPUT).groupByKey()
//                     .windowedBy(TimeWindows.ofSizeWithNoGrace(Duration.ofMinutes(1))).count()
//                     .toStream(), key mapped to "<key>@<windowStartMs>" -> OUTPUT
// OUTPUT: String key, Long value (Serdes.Long: 8-byte big-endian), so that the last value per key
// summed over all keys is the number of input records counted (`bench-harness measure
// --until-count-sum N`).
//
// Kafka Streams' defaults otherwise: RocksDB stores, the 10 MiB record cache, at_least_once, with
// auto.offset.reset=earliest, and commit.interval.ms=1000 as in the stateless contender (the
// default 30 s would make the run wait for the commit that flushes the record cache; ours commits
// every second too). The state directory is a fresh temporary one, removed at exit.
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Comparator;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Stream;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KGroupedStream;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.TimeWindows;

public final class StatefulBench {
    private StatefulBench() {}

    static void deleteTree(Path dir) {
        try (Stream<Path> paths = Files.walk(dir)) {
            paths.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        } catch (IOException e) {
            System.err.println("StatefulBench: could not remove " + dir + ": " + e);
        }
    }

    public static void main(String[] args) throws Exception {
        if (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel") == null) {
            System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        }
        if (args.length != 5) {
            System.err.println("usage: StatefulBench count|windowed-count INPUT OUTPUT APPLICATION_ID THREADS");
            System.exit(2);
        }
        String scenario = args[0];
        String input = args[1];
        String output = args[2];
        String appId = args[3];
        int threads = Integer.parseInt(args[4]);
        String bootstrap = System.getenv().getOrDefault("KAFKA_BOOTSTRAP", "127.0.0.1:9092");

        StreamsBuilder b = new StreamsBuilder();
        KGroupedStream<String, String> grouped =
                b.stream(input, Consumed.with(Serdes.String(), Serdes.String())).groupByKey();
        Produced<String, Long> produced = Produced.with(Serdes.String(), Serdes.Long());
        switch (scenario) {
            case "count" -> grouped.count().toStream().to(output, produced);
            case "windowed-count" -> grouped
                    .windowedBy(TimeWindows.ofSizeWithNoGrace(Duration.ofMinutes(1)))
                    .count()
                    .toStream()
                    .map((w, count) -> KeyValue.pair(w.key() + "@" + w.window().start(), count))
                    .to(output, produced);
            default -> {
                System.err.println("StatefulBench: unknown scenario " + scenario + " (count|windowed-count)");
                System.exit(2);
            }
        }

        Path stateDir = Files.createTempDirectory("ks-stateful-bench");
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        KafkaStreams streams = new KafkaStreams(b.build(), props);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        CountDownLatch failed = new CountDownLatch(1);
        streams.setUncaughtExceptionHandler(e -> {
            failure.compareAndSet(null, e);
            failed.countDown();
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(10));
            deleteTree(stateDir);
        }, "bench-shutdown"));
        streams.start();
        failed.await();
        System.err.println("StatefulBench: uncaught exception in a stream thread");
        failure.get().printStackTrace(System.err);
        System.exit(1);
    }
}
