//! Wire compatibility with a client nobody here wrote: PyPI `confluent-kafka`
//! (`SchemaRegistryClient`, `AvroSerializer`, `AvroDeserializer`) against this registry, with
//! bytes crossing between it and `schema_registry_converter` in both directions.
//!
//! Needs Python with `confluent-kafka` and `fastavro`: `CATALOG_STREAM_PYTHON`, default
//! `$HOME/.cache/catalog-stream/venv/bin/python`. Missing ones fail the test, never skip it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use apache_avro::types::Value;
use schema_registry::Registry;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde_json::json;

const INSTALL: &str = "~/.cache/catalog-stream/venv/bin/pip install 'confluent-kafka[avro,schemaregistry]' fastavro \
     (create the venv first with `python3 -m venv ~/.cache/catalog-stream/venv` if needed)";

fn python() -> PathBuf {
    let python = match std::env::var_os("CATALOG_STREAM_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is not set");
            Path::new(&home).join(".cache/catalog-stream/venv/bin/python")
        }
    };
    assert!(
        python.exists(),
        "Python not found at {} (set CATALOG_STREAM_PYTHON). Install the client with: {INSTALL}",
        python.display()
    );
    python
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/confluent_client_compat.py")
}

/// Runs the script and returns its stdout; panics with stderr and the install hint on failure.
async fn run_script(args: &[&str]) -> String {
    let python = python();
    let output = tokio::process::Command::new(&python)
        .arg(script())
        .args(args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}. Install with: {INSTALL}",
                python.display()
            )
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{stderr}\nIf a package is missing, install with: {INSTALL}",
        python.display(),
        output.status
    );
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

const RUST_SCHEMA: &str = r#"{"type":"record","name":"Product","namespace":"catalog.rust","fields":[
  {"name":"id","type":"string"},
  {"name":"mallId","type":"long"},
  {"name":"price","type":"double"},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"image","type":["null","string"],"default":null},
  {"name":"status","type":{"type":"enum","name":"Status","symbols":["ACTIVE","DELETED"]}},
  {"name":"attributes","type":{"type":"map","values":"string"}}
]}"#;

#[tokio::test]
async fn python_serializes_rust_decodes() {
    let registry = Arc::new(Registry::in_memory());
    let url = common::start_server(registry.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("from-python.bin");
    let out_str = out.to_str().expect("utf-8 path");

    let stdout = run_script(&["produce", &url, "dbserver1.inventory.products", out_str]).await;
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("script output is not JSON ({e}): {stdout}"));
    let subject = "dbserver1.inventory.products-value";
    let id = registry
        .latest(subject)
        .expect("python registered the subject")
        .id;
    assert_eq!(
        report,
        json!({
            "schema_id": id,
            "magic": 0,
            "latest": {"id": id, "version": 1, "subject": subject},
            "lookup": {"id": id, "version": 1},
            "by_id_type": "AVRO",
            "by_id_same": true,
            "subjects": [subject],
            "versions": [1],
            "compatible": true,
            "set_compatibility": {"compatibility": "FULL"},
            "compatibility": "FULL",
            "global_compatibility": "BACKWARD",
        })
    );

    let bytes = std::fs::read(&out).expect("python wrote the bytes");
    let decoder = AvroDecoder::new(common::sr_settings(&url));
    let decoded = decoder
        .decode(Some(&bytes))
        .await
        .expect("decode python's bytes");
    let expected = Value::Record(vec![
        ("id".into(), Value::String("p-42".into())),
        ("mallId".into(), Value::Long(7)),
        ("name".into(), Value::String("Lampe à poser".into())),
        ("price".into(), Value::Double(12.5)),
        (
            "tags".into(),
            Value::Array(vec![
                Value::String("light".into()),
                Value::String("home".into()),
            ]),
        ),
        (
            "image".into(),
            Value::Union(
                1,
                Box::new(Value::String("http://127.0.0.1/img/42.png".into())),
            ),
        ),
        ("status".into(), Value::Enum(0, "ACTIVE".into())),
    ]);
    assert_eq!(decoded.value, expected);
}

#[tokio::test]
async fn rust_serializes_python_decodes() {
    let registry = Arc::new(Registry::in_memory());
    let url = common::start_server(registry).await;
    let encoder = AvroEncoder::new(common::sr_settings(&url));
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        "complete-products".into(),
        false,
        SuppliedSchema::new(
            Some("catalog.rust.Product".into()),
            SchemaType::Avro,
            RUST_SCHEMA.into(),
        ),
    );
    let bytes = encoder
        .encode(
            vec![
                ("id", Value::String("p-7".into())),
                ("mallId", Value::Long(-3)),
                ("price", Value::Double(0.25)),
                ("tags", Value::Array(vec![Value::String("x".into())])),
                ("image", Value::Union(0, Box::new(Value::Null))),
                ("status", Value::Enum(1, "DELETED".into())),
                (
                    "attributes",
                    Value::Map([("color".to_owned(), Value::String("red".into()))].into()),
                ),
            ],
            strategy,
        )
        .await
        .expect("encode");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("from-rust.bin");
    std::fs::write(&path, &bytes).expect("write bytes");

    let stdout = run_script(&[
        "consume",
        &url,
        "complete-products",
        path.to_str().expect("utf-8"),
    ])
    .await;
    let record: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("script output is not JSON ({e}): {stdout}"));
    assert_eq!(
        record,
        json!({
            "id": "p-7",
            "mallId": -3,
            "price": 0.25,
            "tags": ["x"],
            "image": null,
            "status": "DELETED",
            "attributes": {"color": "red"},
        })
    );
}

#[test]
fn missing_python_fails_with_the_install_command() {
    // The message a CI log shows when the client is absent must name the fix.
    let result = std::panic::catch_unwind(|| {
        let missing = Path::new("/nonexistent/python");
        assert!(
            missing.exists(),
            "Python not found at {} (set CATALOG_STREAM_PYTHON). Install the client with: {INSTALL}",
            missing.display()
        );
    });
    let message = result
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(
        message.contains("pip install 'confluent-kafka[avro,schemaregistry]' fastavro"),
        "{message}"
    );
}
