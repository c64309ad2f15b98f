//! A real TCP server and a real client: `schema_registry_converter` encodes and decodes records
//! through the registry (TopicNameStrategy), in the Confluent wire format.

mod common;

use std::sync::Arc;

use apache_avro::types::Value;
use schema_registry::Registry;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

const PRODUCT: &str = r#"{"type":"record","name":"Product","namespace":"catalog","fields":[
  {"name":"id","type":"string"},
  {"name":"mallId","type":"long"},
  {"name":"price","type":"double"},
  {"name":"image","type":["null","string"],"default":null}
]}"#;

fn product_fields() -> Vec<(&'static str, Value)> {
    vec![
        ("id", Value::String("p-1".into())),
        ("mallId", Value::Long(42)),
        ("price", Value::Double(9.5)),
        (
            "image",
            Value::Union(1, Box::new(Value::String("http://img/1.png".into()))),
        ),
    ]
}

fn as_record(fields: Vec<(&'static str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

#[tokio::test]
async fn encode_with_topic_name_strategy_and_decode_back() {
    let registry = Arc::new(Registry::in_memory());
    let url = common::start_server(registry.clone()).await;

    // Register over HTTP as a producer would (the converter's TopicNameStrategy only looks up).
    let response = reqwest::Client::new()
        .post(format!("{url}/subjects/products-value/versions"))
        .header("content-type", schema_registry::CONTENT_TYPE)
        .json(&serde_json::json!({ "schema": PRODUCT }))
        .send()
        .await
        .expect("register request");
    assert!(response.status().is_success(), "{}", response.status());
    let id = response.json::<serde_json::Value>().await.expect("json")["id"]
        .as_u64()
        .expect("id");

    let encoder = AvroEncoder::new(common::sr_settings(&url));
    let bytes = encoder
        .encode(
            product_fields(),
            SubjectNameStrategy::TopicNameStrategy("products".into(), false),
        )
        .await
        .expect("encode");
    assert_eq!(bytes[0], 0, "magic byte");
    assert_eq!(
        u64::from(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])),
        id
    );

    let decoder = AvroDecoder::new(common::sr_settings(&url));
    let decoded = decoder.decode(Some(&bytes)).await.expect("decode");
    assert_eq!(decoded.value, as_record(product_fields()));
    assert_eq!(
        decoded.name.map(|n| n.fullname(None)),
        Some("catalog.Product".to_owned())
    );
}

#[tokio::test]
async fn encoder_registers_supplied_schema_and_key_subject() {
    let registry = Arc::new(Registry::in_memory());
    let url = common::start_server(registry.clone()).await;
    let encoder = AvroEncoder::new(common::sr_settings(&url));
    let supplied = SuppliedSchema::new(
        Some("catalog.Product".into()),
        SchemaType::Avro,
        PRODUCT.into(),
    );
    let bytes = encoder
        .encode(
            product_fields(),
            SubjectNameStrategy::TopicNameStrategyWithSchema(
                "dbserver1.inventory.products".into(),
                false,
                supplied,
            ),
        )
        .await
        .expect("encode registers the schema");
    assert_eq!(
        registry.subjects(false),
        vec!["dbserver1.inventory.products-value".to_owned()]
    );
    let latest = registry
        .latest("dbserver1.inventory.products-value")
        .expect("registered");
    assert_eq!(&bytes[1..5], &latest.id.to_be_bytes());

    let decoder = AvroDecoder::new(common::sr_settings(&url));
    let decoded = decoder.decode(Some(&bytes)).await.expect("decode");
    assert_eq!(decoded.value, as_record(product_fields()));

    // Unknown ids surface as errors, not hangs.
    let mut unknown = bytes.clone();
    unknown[1..5].copy_from_slice(&999u32.to_be_bytes());
    assert!(decoder.decode(Some(&unknown)).await.is_err());
}
