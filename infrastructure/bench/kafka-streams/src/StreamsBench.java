// Kafka Streams contender of the engine benchmark (infrastructure/bench.sh): the same stateless
// topology as ours (Avro envelope -> filter op in c/r/u -> map to the product -> Avro sink).
//
// Avro: Confluent's KafkaAvroSerde is not on Maven Central, so this is a hand-written
// Serde<GenericRecord> on Apache Avro that speaks Confluent's wire format (magic byte 0, 4-byte
// big-endian schema id, binary datum). Writer schemas are fetched by id over HTTP from our
// registry (GET /schemas/ids/{id}) once and cached; the product schema is registered (or looked
// up) once under {topic}-value (POST /subjects/{subject}/versions), as Confluent's serde does.
//
// java -cp 'classes:lib/*' StreamsBench INPUT OUTPUT APPLICATION_ID THREADS
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.time.Duration;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;

public final class StreamsBench {
    static final ObjectMapper JSON = new ObjectMapper();

    /** A minimal Confluent-compatible registry client: schema by id, register under a subject. */
    static final class Registry {
        final String url;
        final HttpClient http = HttpClient.newHttpClient();
        final Map<Integer, Schema> byId = new ConcurrentHashMap<>();

        Registry(String url) {
            this.url = url.endsWith("/") ? url.substring(0, url.length() - 1) : url;
        }

        Schema byId(int id) {
            return byId.computeIfAbsent(id, i -> {
                try {
                    HttpResponse<String> r = http.send(
                            HttpRequest.newBuilder(URI.create(url + "/schemas/ids/" + i)).GET().build(),
                            HttpResponse.BodyHandlers.ofString());
                    if (r.statusCode() != 200) {
                        throw new IllegalStateException("schema id " + i + ": HTTP " + r.statusCode() + " " + r.body());
                    }
                    return new Schema.Parser().parse(JSON.readTree(r.body()).get("schema").asText());
                } catch (Exception e) {
                    throw new RuntimeException(e);
                }
            });
        }

        int register(String subject, Schema schema) {
            try {
                String body = JSON.writeValueAsString(Map.of("schema", schema.toString()));
                HttpResponse<String> r = http.send(
                        HttpRequest.newBuilder(URI.create(url + "/subjects/" + subject + "/versions"))
                                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                                .POST(HttpRequest.BodyPublishers.ofString(body))
                                .build(),
                        HttpResponse.BodyHandlers.ofString());
                JsonNode j = JSON.readTree(r.body());
                if (r.statusCode() != 200 || !j.has("id")) {
                    throw new IllegalStateException("register " + subject + ": HTTP " + r.statusCode() + " " + r.body());
                }
                return j.get("id").asInt();
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        }
    }

    /** Confluent wire format over Apache Avro's generic datum reader and writer. */
    static final class ConfluentAvroSerde implements Serializer<GenericRecord>, Deserializer<GenericRecord> {
        final Registry registry;
        final Schema writerSchema; // for serializing; null when only deserializing
        final Map<Integer, GenericDatumReader<GenericRecord>> readers = new ConcurrentHashMap<>();
        volatile Integer id;
        GenericDatumWriter<GenericRecord> writer;
        BinaryDecoder decoder;
        BinaryEncoder encoder;

        ConfluentAvroSerde(Registry registry, Schema writerSchema) {
            this.registry = registry;
            this.writerSchema = writerSchema;
            if (writerSchema != null) {
                writer = new GenericDatumWriter<>(writerSchema);
            }
        }

        @Override
        public void close() {}

        @Override
        public void configure(Map<String, ?> configs, boolean isKey) {}

        @Override
        public synchronized GenericRecord deserialize(String topic, byte[] data) {
            if (data == null) {
                return null;
            }
            ByteBuffer b = ByteBuffer.wrap(data);
            if (data.length < 5 || b.get() != 0) {
                throw new IllegalArgumentException("not the Confluent wire format");
            }
            int schemaId = b.getInt();
            GenericDatumReader<GenericRecord> reader =
                    readers.computeIfAbsent(schemaId, i -> new GenericDatumReader<>(registry.byId(i)));
            decoder = DecoderFactory.get().binaryDecoder(data, 5, data.length - 5, decoder);
            try {
                return reader.read(null, decoder);
            } catch (java.io.IOException e) {
                throw new RuntimeException(e);
            }
        }

        @Override
        public synchronized byte[] serialize(String topic, GenericRecord value) {
            if (value == null) {
                return null;
            }
            if (id == null) {
                id = registry.register(topic + "-value", writerSchema);
            }
            ByteArrayOutputStream out = new ByteArrayOutputStream(256);
            out.write(0);
            out.writeBytes(ByteBuffer.allocate(4).putInt(id).array());
            encoder = EncoderFactory.get().binaryEncoder(out, encoder);
            try {
                writer.write(value, encoder);
                encoder.flush();
            } catch (java.io.IOException e) {
                throw new RuntimeException(e);
            }
            return out.toByteArray();
        }
    }

    public static void main(String[] args) throws Exception {
        String input = args[0];
        String output = args[1];
        String appId = args[2];
        int threads = Integer.parseInt(args[3]);
        String bootstrap = System.getenv().getOrDefault("KAFKA_BOOTSTRAP", "127.0.0.1:9092");
        Registry registry = new Registry(System.getenv().getOrDefault("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081"));
        Schema product = new Schema.Parser().parse(new String(
                StreamsBench.class.getResourceAsStream("/product.avsc").readAllBytes()));

        // One serde instance per direction; Kafka Streams calls them from its stream threads.
        ConfluentAvroSerde envelopes = new ConfluentAvroSerde(registry, null);
        ConfluentAvroSerde products = new ConfluentAvroSerde(registry, product);
        Serde<GenericRecord> envelopeSerde = Serdes.serdeFrom(envelopes, envelopes);
        Serde<GenericRecord> productSerde = Serdes.serdeFrom(products, products);

        StreamsBuilder b = new StreamsBuilder();
        b.stream(input, Consumed.with(Serdes.String(), envelopeSerde))
                .filter((k, v) -> {
                    String op = String.valueOf(v.get("op"));
                    return op.equals("c") || op.equals("r") || op.equals("u");
                })
                .mapValues(v -> {
                    GenericRecord after = (GenericRecord) v.get("after");
                    GenericRecord source = (GenericRecord) v.get("source");
                    GenericData.Record p = new GenericData.Record(product);
                    p.put("id", after.get("_id"));
                    p.put("sku", after.get("sku"));
                    p.put("name", after.get("name"));
                    p.put("description", after.get("description"));
                    p.put("price_cents", after.get("price_cents"));
                    p.put("currency", after.get("currency"));
                    p.put("category", after.get("category"));
                    p.put("image_urls", after.get("image_urls"));
                    p.put("source_ts_ms", source.get("ts_ms"));
                    return (GenericRecord) p;
                })
                .to(output, Produced.with(Serdes.String(), productSerde));

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        // Ours commits every second; Kafka Streams' at-least-once default is 30 s.
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000);
        props.put(StreamsConfig.STATE_DIR_CONFIG, Files.createTempDirectory("ks-bench").toString());
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

        KafkaStreams streams = new KafkaStreams(b.build(), props);
        CountDownLatch done = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(10));
            done.countDown();
        }));
        streams.start();
        done.await();
    }
}
