"""Reads a topic written by Apicurio's AvroConverter (Confluent framing) with Confluent's own
Python client: confluent-kafka's AvroDeserializer against Apicurio's ccompat v7 API.
Usage: python consume_avro.py [topic] [bootstrap] [registry-url]
Needs: pip install "confluent-kafka[avro,schemaregistry]==2.16.1"."""
import sys
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import SerializationContext, MessageField

topic = sys.argv[1] if len(sys.argv) > 1 else "catalog.catalog.products"
bootstrap = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:19092"
url = sys.argv[3] if len(sys.argv) > 3 else "http://127.0.0.1:8085/apis/ccompat/v7"
sr = SchemaRegistryClient({"url": url})
de = AvroDeserializer(sr)
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "avro-check", "auto.offset.reset": "earliest"})
c.subscribe([topic])
ops, idle = [], 0
while idle < 10:
    m = c.poll(1.0)
    if m is None:
        idle += 1
        continue
    if m.error():
        print("error", m.error())
        continue
    idle = 0
    raw_k, raw_v = m.key(), m.value()
    k = de(raw_k, SerializationContext(topic, MessageField.KEY))
    if raw_v is None:
        print("key", k, "-> tombstone")
        ops.append("tombstone")
        continue
    print("wire", raw_v[:5].hex(), "schema id", int.from_bytes(raw_v[1:5], "big"))
    v = de(raw_v, SerializationContext(topic, MessageField.VALUE))
    print("key", k, "op", v["op"], "after", v["after"], "source.snapshot", v["source"]["snapshot"])
    ops.append(v["op"])
c.close()
print("events:", " ".join(ops))
