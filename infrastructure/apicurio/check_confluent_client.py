from confluent_kafka.schema_registry import SchemaRegistryClient, Schema
from confluent_kafka.schema_registry.avro import AvroSerializer, AvroDeserializer
from confluent_kafka.serialization import SerializationContext, MessageField
import confluent_kafka, sys
url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8085/apis/ccompat/v7"
print("confluent-kafka", confluent_kafka.version())
sr = SchemaRegistryClient({"url": url})
schema = '{"type":"record","name":"Price","namespace":"catalog","fields":[{"name":"sku","type":"string"},{"name":"cents","type":"long"}]}'
sid = sr.register_schema("prices-value", Schema(schema, "AVRO"))
print("registered id", sid)
print("get_schema", sr.get_schema(sid).schema_str[:60])
lv = sr.get_latest_version("prices-value"); print("latest", lv.schema_id, lv.version)
print("subjects", sr.get_subjects())
print("compat set", sr.set_compatibility("prices-value", "BACKWARD"))
print("compat get", sr.get_compatibility("prices-value"))
ser = AvroSerializer(sr, schema)
de = AvroDeserializer(sr)
ctx = SerializationContext("prices", MessageField.VALUE)
b = ser({"sku": "A-1", "cents": 1299}, ctx)
print("wire bytes", b[:5].hex(), len(b))
print("roundtrip", de(b, ctx))
