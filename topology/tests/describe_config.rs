//! Builder, describe (golden) and configuration tests.

use std::sync::Arc;

use topology::config::{Registry, TopologyConfig};
use topology::serdes::{JsonSerde, StringSerde};
use topology::{AsyncOptions, Predicate, TopologyBuilder, processor_fn};

fn pipeline() -> topology::Topology {
    let b = TopologyBuilder::new();
    let yes: Predicate = Arc::new(|_| true);
    let branches = b
        .source(
            "cdc",
            "products",
            Arc::new(StringSerde),
            Arc::new(JsonSerde),
        )
        .branch("split", vec![("upserts", yes.clone()), ("deletes", yes)]);
    branches[0]
        .process_async(
            "collect",
            processor_fn(|r| async move { Ok(vec![r]) }),
            AsyncOptions::default(),
        )
        .to(
            "events",
            "image-events",
            Arc::new(StringSerde),
            Arc::new(JsonSerde),
        );
    branches[1].to(
        "removes",
        "deletes",
        Arc::new(StringSerde),
        Arc::new(JsonSerde),
    );
    b.source(
        "ev",
        "image-events",
        Arc::new(StringSerde),
        Arc::new(JsonSerde),
    )
    .filter("collected", |r| r.value.is_some())
    .to(
        "complete",
        "complete-products",
        Arc::new(StringSerde),
        Arc::new(JsonSerde),
    );
    b.build().expect("valid topology")
}

const GOLDEN: &str = "Topologies:
   Sub-topology: 0
    Source: cdc (topics: [products])
      --> split
    Processor: split (stores: [])
      --> deletes, upserts
      <-- cdc
    Processor: deletes (stores: [])
      --> removes
      <-- split
    Processor: upserts (stores: [])
      --> collect
      <-- split
    Processor: collect (stores: [])
      --> events
      <-- upserts
    Sink: removes (topic: deletes)
      <-- deletes
    Sink: events (topic: image-events)
      <-- collect

   Sub-topology: 1
    Source: ev (topics: [image-events])
      --> collected
    Processor: collected (stores: [])
      --> complete
      <-- ev
    Sink: complete (topic: complete-products)
      <-- collected

";

#[test]
fn describe_matches_golden() {
    assert_eq!(pipeline().describe(), GOLDEN);
}

#[test]
fn mermaid_is_drawn_from_the_description() {
    let m = pipeline().describe_mermaid();
    assert!(m.starts_with("flowchart LR\n"));
    assert!(m.contains("subgraph sub0[\"Sub-topology: 0\"]"));
    assert!(m.contains("subgraph sub1[\"Sub-topology: 1\"]"));
    assert!(m.contains("t_products --> n_cdc"));
    assert!(m.contains("n_events --> t_image_events"));
    assert!(m.contains("t_image_events --> n_ev"));
    assert!(m.contains("n_split --> n_upserts"));
}

#[test]
fn builder_reports_duplicates_and_double_reads() {
    let b = TopologyBuilder::new();
    let s = b.source("a", "t", Arc::new(StringSerde), Arc::new(StringSerde));
    s.filter("a", |_| true);
    b.source("b", "t", Arc::new(StringSerde), Arc::new(StringSerde));
    let errs = b.build().expect_err("errors");
    assert_eq!(errs.len(), 2, "{errs:?}");
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.processor("image-collector", |_| {
        Ok(processor_fn(|r| async move { Ok(vec![r]) }))
    });
    r
}

const GOOD: &str = r#"
application_id: diff-checker
nodes:
  - name: cdc
    type: source
    topic: products
    key: string
    value: json
  - name: split
    type: branch
    from: cdc
    branches:
      - name: upserts
        when: {field: op, in: [c, r, u]}
      - name: deletes
        when: {field: op, eq: d}
  - name: collect
    type: process
    from: upserts
    processor: image-collector
    concurrency: 64
    ordering: key
    retry: {max_attempts: 5, initial_backoff_ms: 100, max_backoff_ms: 10000, jitter: 0.2}
  - name: events
    type: sink
    from: collect
    topic: image-events
    key: string
    value: json
  - name: removes
    type: sink
    from: deletes
    topic: deletes
    key: string
    value: json
  - name: ev
    type: source
    topic: image-events
    key: string
    value: json
  - name: collected
    type: filter
    from: ev
    when: {field: op, exists: true}
  - name: complete
    type: sink
    from: collected
    topic: complete-products
    key: string
    value: json
"#;

#[test]
fn config_builds_the_same_topology_as_code() {
    let cfg = TopologyConfig::from_yaml(GOOD).expect("parses");
    let t = cfg.build(&registry()).expect("valid");
    assert_eq!(t.describe(), GOLDEN);
}

#[test]
fn config_collects_every_error_with_place() {
    let bad = r#"
schema_registry_url: http://127.0.0.1:8081
nodes:
  - name: cdc
    type: source
    key: string
    value: string
  - name: split
    type: branch
    from: cdc
    branches:
      - name: upserts
        when: {field: op, in: [c, r, u]}
  - name: collect
    type: process
    from: nowhere
    processor: image-fetcher
    concurrency: 0
    ordering: sideways
    retry: {jitter: 2.0}
  - name: loop-a
    type: filter
    from: loop-b
    when: {field: op, eq: c}
  - name: loop-b
    type: map
    from: loop-a
    function: missing
  - name: out
    type: sink
    from: upserts
    topic: cdc-copy
    value: avro
  - name: back
    type: sink
    from: upserts
    topic: products
    value: json
  - name: cdc2
    type: source
    topic: products
    value: xml
"#;
    let errs = TopologyConfig::from_yaml(bad)
        .expect("parses")
        .validate(&registry())
        .expect_err("invalid");
    let text = errs.to_string();
    let want = [
        ("nodes[0].topic", "needs a topic"),
        ("nodes[1].when", "serde mismatch"),
        ("nodes[2].from", "unknown upstream node `nowhere`"),
        ("nodes[2].processor", "unknown processor `image-fetcher`"),
        ("nodes[2].concurrency", "at least 1"),
        ("nodes[2].ordering", "unknown ordering"),
        ("nodes[2].retry.jitter", "outside"),
        ("nodes[4].function", "unknown map function `missing`"),
        ("nodes[3].from", "cycle"),
        ("nodes[5].value", "avro sink needs a `schema`"),
        ("nodes[7].value", "unknown serde `xml`"),
    ];
    for (path, msg) in want {
        assert!(
            errs.errors
                .iter()
                .any(|e| e.path == path && e.message.contains(msg)),
            "missing {path}: {msg} in\n{text}"
        );
    }
    let proc_err = errs
        .errors
        .iter()
        .find(|e| e.path == "nodes[2].processor")
        .expect("processor error");
    assert_eq!(proc_err.line, Some(17), "{text}");
    let unknown = errs
        .errors
        .iter()
        .find(|e| e.path == "nodes[0].topic")
        .expect("topic");
    assert_eq!(unknown.line, Some(4), "{text}");
}

#[test]
fn config_serde_mismatch_between_sink_and_source() {
    let yaml = r#"
nodes:
  - {name: a, type: source, topic: x, value: json}
  - {name: w, type: sink, from: a, topic: y, value: string}
  - {name: b, type: source, topic: y, value: json}
"#;
    let errs = TopologyConfig::from_yaml(yaml)
        .expect("parses")
        .validate(&Registry::new())
        .expect_err("mismatch");
    assert!(
        errs.errors
            .iter()
            .any(|e| e.path == "nodes[1].value" && e.message.contains("serde mismatch")),
        "{errs}"
    );
}

#[test]
fn config_parse_error_has_line() {
    let errs =
        TopologyConfig::from_yaml("nodes:\n  - name: a\n    typo_field: 1\n").expect_err("bad");
    assert_eq!(errs.errors[0].line, Some(3), "{errs}");
}
