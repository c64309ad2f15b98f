"""Quix Streams contender of the engine benchmark (infrastructure/bench.sh).

The same stateless topology as ours: Avro envelope -> filter op in c/r/u -> map to the product
-> Avro sink. Avro goes through Quix's AvroSerializer/AvroDeserializer with a Schema Registry
client config, i.e. Confluent's confluent-kafka AvroSerializer/AvroDeserializer (Confluent wire
format, schema fetched by id / registered under {topic}-value) against our registry.

    python quix_bench.py INPUT OUTPUT GROUP
"""

import json
import os
import pathlib
import sys
import tempfile

from quixstreams import Application
from quixstreams.models.serializers.avro import AvroDeserializer, AvroSerializer
from quixstreams.models.serializers.schema_registry import SchemaRegistryClientConfig


def to_product(v):
    after = v["after"]
    return {
        "id": after["_id"],
        "sku": after["sku"],
        "name": after["name"],
        "description": after["description"],
        "price_cents": after["price_cents"],
        "currency": after["currency"],
        "category": after["category"],
        "image_urls": after["image_urls"],
        "source_ts_ms": v["source"]["ts_ms"],
    }


def main():
    input_topic, output_topic, group = sys.argv[1:4]
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    registry = SchemaRegistryClientConfig(
        url=os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081")
    )
    product = json.loads(
        (pathlib.Path(__file__).parent.parent / "schemas" / "product.avsc").read_text()
    )
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        auto_create_topics=False,
        use_changelog_topics=False,
        commit_interval=1.0,
        state_dir=tempfile.mkdtemp(prefix="quix-bench-"),
    )
    source = app.topic(
        input_topic,
        key_deserializer="string",
        value_deserializer=AvroDeserializer(schema_registry_client_config=registry),
    )
    sink = app.topic(
        output_topic,
        key_serializer="string",
        value_serializer=AvroSerializer(product, schema_registry_client_config=registry),
    )
    sdf = app.dataframe(source)
    sdf = sdf.filter(lambda v: v["op"] in ("c", "r", "u"))
    sdf = sdf.apply(to_product)
    sdf.to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
