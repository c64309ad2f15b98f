//! Builder, describe (golden) and configuration tests.

use std::sync::Arc;

use topology::config::{Registry, TopologyConfig};
use topology::serdes::{JsonSerde, StringSerde};
use topology::{AsyncOptions, Predicate, StoreSpec, TopologyBuilder, processor_fn};

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
    // A node's fields depend on its type, so the type comes first; without one, that is the
    // error, at the node's line.
    let errs =
        TopologyConfig::from_yaml("nodes:\n  - name: a\n    typo_field: 1\n").expect_err("bad");
    assert_eq!(errs.errors[0].line, Some(2), "{errs}");
    assert_eq!(errs.errors[0].path, "nodes[0].type", "{errs}");
    let errs =
        TopologyConfig::from_yaml("nodes:\n  - name: a\n    type: source\n    typo_field: 1\n")
            .expect_err("bad");
    assert_eq!(errs.errors[0].line, Some(4), "{errs}");
    assert_eq!(errs.errors[0].path, "nodes[0].typo_field", "{errs}");
    assert!(errs.errors[0].message.contains("typo_field"), "{errs}");
}

/// Two sources, each feeding a processor; both processors use the store `seen` (one written as
/// a flow list, one as a block list).
const SHARED_STORE: &str = r#"
application_id: dedupe
stores:
  - name: seen
    cache_entries: 16
nodes:
  - {name: in-a, type: source, topic: a, key: string, value: json}
  - {name: in-b, type: source, topic: b, key: string, value: json}
  - name: dedupe-a
    type: process
    from: in-a
    processor: image-collector
    stores: [seen]
  - name: dedupe-b
    type: process
    from: in-b
    processor: image-collector
    stores:
      - seen
  - {name: out, type: sink, from: dedupe-a, topic: out, key: string, value: json}
"#;

#[test]
fn config_store_shared_by_two_processors_joins_one_subtopology() {
    let cfg = TopologyConfig::from_yaml(SHARED_STORE).expect("parses");
    let t = cfg.build(&registry()).expect("valid");
    let text = t.describe();
    assert_eq!(t.subtopologies().len(), 1, "{text}");
    assert_eq!(text.matches("Sub-topology:").count(), 1, "{text}");
    assert!(
        text.contains("Processor: dedupe-a (stores: [seen])"),
        "{text}"
    );
    assert!(
        text.contains("Processor: dedupe-b (stores: [seen])"),
        "{text}"
    );
    let st = &t.subtopologies()[0];
    assert_eq!(st.source_topics, ["a", "b"]);
    assert_eq!(st.stores, [StoreSpec::new("seen").cache_entries(16)]);
    // Defaults: a changelog, and the cache size as written.
    assert_eq!(t.stores(), [StoreSpec::new("seen").cache_entries(16)]);
}

#[test]
fn config_store_without_changelog() {
    let yaml = r#"
stores:
  - {name: scratch, changelog: false}
nodes:
  - {name: in, type: source, topic: a, value: json}
  - {name: p, type: process, from: in, processor: image-collector, stores: [scratch]}
"#;
    let t = TopologyConfig::from_yaml(yaml)
        .expect("parses")
        .build(&registry())
        .expect("valid");
    assert_eq!(t.stores(), [StoreSpec::new("scratch").without_changelog()]);
    assert!(!t.stores()[0].changelog);
    assert_eq!(t.stores()[0].cache_entries, 0);
}

#[test]
fn config_store_errors_have_path_and_line() {
    // The top-level `stores:` comes after the nodes, so a node's own `stores:` line precedes it.
    let long = "x".repeat(201);
    // A source's `stores` is not one of its fields: the file does not parse.
    let source_stores =
        "nodes:\n  - name: in\n    type: source\n    topic: a\n    stores: [seen]\n";
    let errs = TopologyConfig::from_yaml(source_stores).expect_err("a source has no stores");
    assert_eq!(errs.errors.len(), 1, "{errs}");
    let e = &errs.errors[0];
    assert_eq!(e.path, "nodes[0].stores", "{errs}");
    assert!(
        e.message.contains("only process nodes use stores"),
        "{errs}"
    );
    assert_eq!(e.line, Some(5), "{errs}");
    let yaml = format!(
        r#"
application_id: app
nodes:
  - name: in
    type: source
    topic: a
    value: json
    # stores: [seen] here is a parse error, checked above
  - name: p
    type: process
    from: in
    processor: image-collector
    stores:
      - seen
      - missing
      - bad/name
      - {long}
  - {{name: q, type: process, from: in, processor: image-collector, stores: [seen, seen]}}
stores:
  - name: seen
  - name: spare
  - name: seen
    changelog: false
  - name: bad/name
  - name: {long}
  - cache_entries: 4
"#
    );
    let errs = TopologyConfig::from_yaml(&yaml)
        .expect("parses")
        .validate(&registry())
        .expect_err("invalid");
    let text = errs.to_string();
    let want: [(&str, &str, usize); 7] = [
        ("nodes[1].stores[1]", "unknown store `missing`", 15),
        ("nodes[2].stores[1]", "store `seen` is listed twice", 18),
        (
            "stores[1]",
            "store `spare` is not used by any processor",
            21,
        ),
        ("stores[2].name", "duplicate store `seen`", 22),
        ("stores[3].name", "invalid store name `bad/name`", 24),
        ("stores[4].name", "longer than 200 bytes", 25),
        ("stores[5].name", "a store name is required", 26),
    ];
    for (path, msg, line) in want {
        let e = errs
            .errors
            .iter()
            .find(|e| e.path == path && e.message.contains(msg))
            .unwrap_or_else(|| panic!("missing {path}: {msg} in\n{text}"));
        assert_eq!(e.line, Some(line), "{path}: {msg} in\n{text}");
        assert!(text.contains(&format!("line {line}: {path}: ")), "{text}");
    }
    // One error per problem: the invalid name is declared (and used), so it is neither unknown
    // nor unused; the duplicate is not reported unused either.
    assert_eq!(errs.errors.len(), want.len(), "{text}");
}

#[test]
fn config_store_unknown_field_is_rejected_with_line() {
    let yaml = "stores:\n  - name: seen\n    changelgo: false\nnodes: []\n";
    let errs = TopologyConfig::from_yaml(yaml).expect_err("unknown field");
    assert_eq!(errs.errors[0].line, Some(3), "{errs}");
    assert!(errs.errors[0].message.contains("changelgo"), "{errs}");
}
