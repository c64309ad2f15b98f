//! A sled-backed registry keeps ids, versions, deletions and config across a reopen.

mod common;

use std::sync::Arc;

use schema_registry::{CompatibilityLevel, Registry, VersionSpec};

const A: &str = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#;
const A2: &str = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"},{"name":"y","type":"string","default":""}]}"#;
const B: &str = r#"{"type":"record","name":"B","fields":[{"name":"s","type":"string"}]}"#;
const C: &str = r#"{"type":"record","name":"C","fields":[{"name":"z","type":"long"}]}"#;

#[tokio::test]
async fn reopened_registry_serves_the_same_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, a2, b) = {
        let registry = Registry::open(dir.path()).expect("open");
        let a = registry.register("a-value", A).expect("register A");
        let a2 = registry.register("a-value", A2).expect("register A2");
        let b = registry.register("b-value", B).expect("register B");
        assert_eq!(registry.register("b-key", A).expect("register A again"), a);
        registry
            .set_global_compatibility(CompatibilityLevel::Full)
            .expect("global config");
        registry
            .set_subject_compatibility("b-value", CompatibilityLevel::None)
            .expect("subject config");
        registry
            .delete_version("a-value", VersionSpec::Number(1), false)
            .expect("soft delete");
        (a, a2, b)
    };

    let registry = Arc::new(Registry::open(dir.path()).expect("reopen"));
    assert_eq!(registry.schema_by_id(a).expect("A by id"), A);
    assert_eq!(registry.schema_by_id(a2).expect("A2 by id"), A2);
    assert_eq!(registry.lookup("b-value", B).expect("lookup B").id, b);
    assert_eq!(registry.lookup("b-key", A).expect("lookup A").id, a);
    assert_eq!(
        registry.versions("a-value", false).expect("versions"),
        vec![2]
    );
    assert_eq!(
        registry.versions("a-value", true).expect("versions"),
        vec![1, 2]
    );
    assert_eq!(registry.global_compatibility(), CompatibilityLevel::Full);
    assert_eq!(
        registry.subject_compatibility("b-value"),
        Some(CompatibilityLevel::None)
    );
    // Registering again is idempotent, and new schemas get fresh ids.
    assert_eq!(registry.register("a-value", A2).expect("again"), a2);
    let c = registry.register("c-value", C).expect("register C");
    assert!(c > a.max(a2).max(b), "id {c} reused");

    // And the reopened store serves over HTTP.
    let url = common::start_server(registry).await;
    let body: serde_json::Value = reqwest::get(format!("{url}/schemas/ids/{a2}"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(body, serde_json::json!({ "schema": A2 }));
}

#[test]
fn permanent_delete_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let registry = Registry::open(dir.path()).expect("open");
        registry.register("gone-value", A).expect("register");
        registry.delete_subject("gone-value", false).expect("soft");
        registry.delete_subject("gone-value", true).expect("hard");
    }
    let registry = Registry::open(dir.path()).expect("reopen");
    assert!(registry.subjects(true).is_empty());
    assert!(
        registry.schema_by_id(1).is_ok(),
        "ids are never reused or dropped"
    );
    assert_eq!(registry.register("b-value", B).expect("register"), 2);
}
