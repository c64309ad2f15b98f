#!/usr/bin/env python3
"""Wire-compatibility check of catalog-stream's schema registry with Confluent's own Python client.

Driven by tests/confluent_client_compat.rs, which starts the registry and runs:

  confluent_client_compat.py produce URL TOPIC OUT_FILE
      AvroSerializer (auto-registering TOPIC-value) serializes RECORD and writes the Confluent
      wire-format bytes to OUT_FILE; then exercises the client's other registry calls and prints
      one JSON object with what they returned.

  confluent_client_compat.py consume URL TOPIC IN_FILE
      AvroDeserializer decodes the bytes in IN_FILE (fetching the writer schema by id) and prints
      the record as JSON.

Needs PyPI confluent-kafka (with its avro and schemaregistry extras) and fastavro:
  ~/.cache/catalog-stream/venv/bin/pip install 'confluent-kafka[avro,schemaregistry]' fastavro
"""

import json
import sys

INSTALL = "~/.cache/catalog-stream/venv/bin/pip install 'confluent-kafka[avro,schemaregistry]' fastavro"

try:
    import fastavro  # noqa: F401  (AvroSerializer needs it)
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
except ImportError as error:
    print(f"missing Python package ({error}); install with: {INSTALL}", file=sys.stderr)
    sys.exit(3)

SCHEMA = {
    "type": "record",
    "name": "Product",
    "namespace": "catalog.python",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "mallId", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "price", "type": "double"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "image", "type": ["null", "string"], "default": None},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["ACTIVE", "DELETED"]}},
    ],
}

RECORD = {
    "id": "p-42",
    "mallId": 7,
    "name": "Lampe à poser",
    "price": 12.5,
    "tags": ["light", "home"],
    "image": "http://127.0.0.1/img/42.png",
    "status": "ACTIVE",
}


def produce(url: str, topic: str, out_file: str) -> None:
    client = SchemaRegistryClient({"url": url})
    schema_str = json.dumps(SCHEMA)
    serializer = AvroSerializer(client, schema_str)
    data = serializer(RECORD, SerializationContext(topic, MessageField.VALUE))
    with open(out_file, "wb") as f:
        f.write(data)

    subject = f"{topic}-value"
    schema = Schema(schema_str, "AVRO")
    latest = client.get_latest_version(subject)
    found = client.lookup_schema(subject, schema)
    by_id = client.get_schema(latest.schema_id)
    report = {
        "schema_id": int.from_bytes(data[1:5], "big"),
        "magic": data[0],
        "latest": {"id": latest.schema_id, "version": latest.version, "subject": latest.subject},
        "lookup": {"id": found.schema_id, "version": found.version},
        "by_id_type": by_id.schema_type,
        "by_id_same": json.loads(by_id.schema_str) == json.loads(schema_str),
        "subjects": client.get_subjects(),
        "versions": client.get_versions(subject),
        "compatible": client.test_compatibility(subject, schema),
        "set_compatibility": client.set_compatibility(subject, "FULL"),
        "compatibility": client.get_compatibility(subject),
        "global_compatibility": client.get_compatibility(),
    }
    print(json.dumps(report, sort_keys=True))


def consume(url: str, topic: str, in_file: str) -> None:
    client = SchemaRegistryClient({"url": url})
    deserializer = AvroDeserializer(client)
    with open(in_file, "rb") as f:
        data = f.read()
    record = deserializer(data, SerializationContext(topic, MessageField.VALUE))
    print(json.dumps(record, sort_keys=True))


def main() -> None:
    if len(sys.argv) != 5 or sys.argv[1] not in ("produce", "consume"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    command, url, topic, path = sys.argv[1:]
    (produce if command == "produce" else consume)(url, topic, path)


if __name__ == "__main__":
    main()
