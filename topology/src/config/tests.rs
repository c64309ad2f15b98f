//! Unit tests of the loader, references and the plan.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::serdes::MemorySchemaRegistry;
use crate::{ProcessError, processor_fn};

fn registry() -> Registry {
    let mut r = Registry::new();
    r.processor("echo", |_| {
        Ok(processor_fn(
            |r| async move { Ok::<_, ProcessError>(vec![r]) },
        ))
    });
    r
}

fn errors_of(yaml: &str, registry: &Registry) -> ConfigErrors {
    match TopologyConfig::from_yaml(yaml) {
        Err(e) => e,
        Ok(cfg) => cfg.validate(registry).expect_err("invalid"),
    }
}

fn find<'a>(errs: &'a ConfigErrors, path: &str) -> &'a ConfigError {
    errs.errors
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no error at {path} in\n{errs}"))
}

#[test]
fn a_field_of_another_kind_is_reported_at_its_line() {
    // `dead_letter_topic` is a source's field, `function` a map's: each is unknown on the
    // kind it is written on, and both nodes are reported at once.
    let yaml = "\
nodes:
  - {name: in, type: source, topic: a, value: json}
  - name: out
    type: sink
    from: in
    topic: b
    dead_letter_topic: b.dlq
  - name: p
    type: process
    from: in
    processor: echo
    function: nope
";
    let errs = TopologyConfig::from_yaml(yaml).expect_err("unknown fields");
    assert_eq!(errs.errors.len(), 2, "{errs}");
    let e = find(&errs, "nodes[1].dead_letter_topic");
    assert_eq!(e.line, Some(7), "{errs}");
    assert!(
        e.message.contains("Unknown field `dead_letter_topic`"),
        "{errs}"
    );
    let e = find(&errs, "nodes[2].function");
    assert_eq!(e.line, Some(12), "{errs}");
}

#[test]
fn unknown_type_and_bad_values_have_lines() {
    let yaml = "\
nodes:
  - name: a
    type: tabel
  - name: b
    type: process
    from: a
    processor: echo
    concurrency: many
";
    let errs = TopologyConfig::from_yaml(yaml).expect_err("bad");
    let e = find(&errs, "nodes[0].type");
    assert!(e.message.contains("unknown node type `tabel`"), "{errs}");
    assert_eq!(e.line, Some(3), "{errs}");
    assert_eq!(find(&errs, "nodes[1].concurrency").line, Some(8), "{errs}");
}

#[test]
fn a_duplicate_key_is_an_error_with_its_line() {
    let yaml = "nodes:\n  - name: a\n    type: source\n    topic: x\n    topic: y\n";
    let errs = TopologyConfig::from_yaml(yaml).expect_err("duplicate");
    assert_eq!(errs.errors[0].line, Some(5), "{errs}");
}

#[test]
fn topic_and_schema_references_resolve_through_the_registry() {
    let yaml = "\
nodes:
  - {name: in, type: source, topic: {ref: cdc}, key: string, value: avro}
  - name: out
    type: sink
    from: in
    topics_are_not_here: true
";
    // Unknown fields first; then the references themselves.
    assert!(TopologyConfig::from_yaml(yaml).is_err());
    let yaml = "\
nodes:
  - {name: in, type: source, topics: [{ref: cdc}, plain], key: string, value: avro}
  - name: out
    type: sink
    from: in
    topic: {ref: events}
    key: string
    value: {type: avro, schema: {ref: event}}
";
    let mut r = registry();
    r.schema_registry(Arc::new(MemorySchemaRegistry::default()));
    r.topic("cdc", "shop.catalog.products")
        .topic("events", "image-events");
    r.avro_schema(
        "event",
        apache_avro::Schema::parse_str(r#"{"type": "record", "name": "E", "fields": []}"#)
            .expect("schema"),
    );
    let t = TopologyConfig::from_yaml(yaml)
        .expect("parses")
        .build(&r)
        .expect("valid");
    let text = t.describe();
    assert!(
        text.contains("Source: in (topics: [shop.catalog.products, plain])"),
        "{text}"
    );
    assert!(text.contains("Sink: out (topic: image-events)"), "{text}");
}

#[test]
fn unknown_topic_and_schema_references_are_errors_with_lines() {
    let yaml = "\
nodes:
  - name: in
    type: source
    topic: {ref: cdc}
    value: avro
  - name: out
    type: sink
    from: in
    topic:
      ref: events
    value: {type: avro, schema: {ref: nope}}
";
    let mut r = registry();
    r.schema_registry(Arc::new(MemorySchemaRegistry::default()));
    r.topic("events", "image-events");
    let errs = errors_of(yaml, &r);
    assert_eq!(errs.errors.len(), 2, "{errs}");
    let e = find(&errs, "nodes[0].topic.ref");
    assert_eq!(e.line, Some(4), "{errs}");
    assert_eq!(
        e.message, "unknown topic `cdc` (registered: events)",
        "{errs}"
    );
    let e = find(&errs, "nodes[1].value.schema.ref");
    assert_eq!(e.line, Some(11), "{errs}");
    assert!(e.message.contains("unknown schema `nope`"), "{errs}");
}

#[test]
fn avro_without_a_schema_registry_is_an_error_not_a_fallback() {
    let yaml = "nodes:\n  - {name: in, type: source, topic: a, value: avro}\n";
    let errs = errors_of(yaml, &registry());
    let e = find(&errs, "nodes[0].value");
    assert!(
        e.message.contains("avro needs `schema_registry_url`"),
        "{errs}"
    );
    assert_eq!(e.line, Some(2), "{errs}");
    // The caller's explicit choice of an in-memory registry is taken.
    let mut r = registry();
    r.schema_registry(Arc::new(MemorySchemaRegistry::default()));
    TopologyConfig::from_yaml(yaml)
        .expect("parses")
        .build(&r)
        .expect("valid");
}

#[test]
fn the_plan_is_built_once_and_its_processor_made_once() {
    let made = Arc::new(AtomicUsize::new(0));
    let mut r = Registry::new();
    let counter = made.clone();
    r.processor("counted", move |config| {
        counter.fetch_add(1, Ordering::SeqCst);
        assert_eq!(config["limit"], serde_json::json!(64));
        assert_eq!(config["label"], serde_json::json!("64"));
        assert_eq!(config["on"], serde_json::json!(true));
        Ok(processor_fn(
            |r| async move { Ok::<_, ProcessError>(vec![r]) },
        ))
    });
    // The sink comes first in the file: the plan orders nodes after their upstream ones.
    let yaml = r#"
application_id: counted-app
nodes:
  - {name: out, type: sink, from: p, topic: b, value: json}
  - name: p
    type: process
    from: in
    processor: counted
    config: {limit: 64, label: "64", on: true}
  - {name: in, type: source, topic: a, value: json}
"#;
    let cfg = TopologyConfig::from_yaml(yaml).expect("parses");
    let plan: TopologyPlan = cfg.validate(&r).expect("valid");
    assert_eq!(made.load(Ordering::SeqCst), 1);
    assert_eq!(plan.application_id(), Some("counted-app"));
    let topology = plan.build().expect("builds");
    assert_eq!(
        made.load(Ordering::SeqCst),
        1,
        "build must not call the factory again"
    );
    assert!(topology.describe().contains("Processor: p (stores: [])"));
}

#[test]
fn node_config_is_type_tagged_in_other_formats_too() {
    let node: NodeConfig = serde_json::from_value(serde_json::json!({
        "type": "flat_map", "name": "x", "from": "in", "function": "f"
    }))
    .expect("a flat_map node");
    assert_eq!(node.kind(), "flat_map");
    assert_eq!(node.from(), ["in"]);
    let err = serde_json::from_value::<NodeConfig>(serde_json::json!({
        "type": "filter", "name": "x", "function": "f"
    }))
    .expect_err("a filter has no function");
    assert!(err.to_string().contains("function"), "{err}");
}

#[test]
fn line_at_follows_block_and_flow_paths() {
    let text = "\
nodes:
  - name: a
    retry: {jitter: 2}
    stores:
      - x
      - y
";
    let tree = yaml::parse(text).expect("parses");
    assert_eq!(yaml::line_at(&tree, "nodes[0]"), Some(2));
    assert_eq!(yaml::line_at(&tree, "nodes[0].retry.jitter"), Some(3));
    assert_eq!(yaml::line_at(&tree, "nodes[0].stores[1]"), Some(6));
    // A field not written: the deepest place found, the node.
    assert_eq!(yaml::line_at(&tree, "nodes[0].topic"), Some(2));
}

#[test]
fn a_placeholder_is_not_taken_for_a_topic_name() {
    let yaml = "nodes:\n  - name: in\n    type: source\n    topic: ${topics.cdc}\n";
    let errs = errors_of(yaml, &registry());
    let e = find(&errs, "nodes[0].topic");
    assert!(
        e.message.contains("invalid topic name `${topics.cdc}`"),
        "{errs}"
    );
    assert!(e.message.contains("{ref: name}"), "{errs}");
    assert_eq!(e.line, Some(4), "{errs}");
}
