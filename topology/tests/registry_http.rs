//! The HTTP schema registry client against the real registry (`SCHEMA_REGISTRY_URL`, from
//! `infrastructure/up.sh`); fails rather than skips without one.

mod common;

use std::sync::Arc;

use topology::serdes::{HttpSchemaRegistry, SchemaRegistry};

use common::{setting, unique};

/// Many records reaching a new sink at once register its schema concurrently. Apicurio's
/// Confluent API answers a concurrent first registration of one subject with 409 ("artifact
/// already exists"), which dead-lettered records in the operability test; every caller must
/// get the one id instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_registrations_of_a_subject_all_get_its_id() {
    let subject = format!("{}-value", unique("concurrent-register"));
    let schema = apache_avro::Schema::parse_str(
        r#"{"type":"record","name":"ImageEvent","fields":[{"name":"id","type":"string"}]}"#,
    )
    .expect("schema");
    let registry = Arc::new(HttpSchemaRegistry::new(setting("SCHEMA_REGISTRY_URL")));
    // Also a second client, as another process would be: the race is not only in-process.
    let other = Arc::new(HttpSchemaRegistry::new(setting("SCHEMA_REGISTRY_URL")));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let client = if i % 2 == 0 {
            registry.clone()
        } else {
            other.clone()
        };
        let (subject, schema) = (subject.clone(), schema.clone());
        tasks.spawn(async move { client.register(&subject, &schema).await });
    }
    let mut ids = Vec::new();
    while let Some(result) = tasks.join_next().await {
        ids.push(result.expect("task").expect("registered"));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1, "one id for one schema: {ids:?}");
    let fetched = registry.schema_by_id(ids[0]).await.expect("by id");
    assert_eq!(fetched.canonical_form(), schema.canonical_form());
}
