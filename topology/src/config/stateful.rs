//! The stateful kinds: `type: table` (a table of a topic, or of a Debezium topic), `type:
//! count` (per key, or per key and window, optionally suppressed to final results) and
//! `type: join` (a stream joined to a table). Each adds its nodes and stores through the
//! builder DSL ([`crate::stateful`]); its last node carries the config node's name, so
//! downstream nodes name it in `from` as any other.

use std::time::Duration;

use serde::Deserialize;

use super::context::NodeContext;
use super::spec::{OneOrMany, SerdeSpec, TopicSpec};
use crate::Value;
use crate::graph::TopologyBuilder;
use crate::serdes::SerdeRef;
use crate::stateful::{JoinKind, LatePolicy, Table, TimeWindows};

/// A table node: the latest value per key of a topic, in the store of the node's name.
///
/// ```yaml
/// - name: products
///   type: table
///   topic: {ref: products-cdc}
///   key: json
///   value: json
///   cdc: true     # a Debezium topic: the `after` image per key, deleted on `d` and tombstones
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Unique name (also its store's).
    #[serde(default)]
    pub name: String,
    /// The topic read.
    #[serde(default)]
    pub topic: Option<TopicSpec>,
    /// Key serde (default `bytes`).
    #[serde(default)]
    pub key: Option<SerdeSpec>,
    /// Value serde (default `bytes`).
    #[serde(default)]
    pub value: Option<SerdeSpec>,
    /// Whether the topic carries Debezium change events.
    #[serde(default)]
    pub cdc: bool,
}

/// Time windows of a `count`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Window length.
    pub size_ms: u64,
    /// Distance between window starts (default: `size_ms`, tumbling).
    #[serde(default)]
    pub advance_ms: Option<u64>,
    /// How long after its end a window accepts records (default 0).
    #[serde(default)]
    pub grace_ms: u64,
    /// Late records: `dead_letter` (default) or `drop`.
    #[serde(default)]
    pub late: Option<String>,
}

/// A count node: records per key, or per key and window.
///
/// ```yaml
/// - name: clicks-per-region
///   type: count
///   from: clicks
///   group_by: {field: region}   # default: the record's key (no repartition)
///   window: {size_ms: 60000, grace_ms: 10000}
///   suppress: true              # one final count per window, when it closes
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CountConfig {
    /// Unique name (its store's, or its suppression buffer's with `suppress`).
    #[serde(default)]
    pub name: String,
    /// Upstream node(s).
    #[serde(default)]
    pub from: Option<OneOrMany>,
    /// A value field to group by, through the repartition topic
    /// `<application_id>-<name>-by-repartition`.
    #[serde(default)]
    pub group_by: Option<GroupByConfig>,
    /// Count per time window.
    #[serde(default)]
    pub window: Option<WindowConfig>,
    /// Emit one final count per window when it closes (needs `window`).
    #[serde(default)]
    pub suppress: bool,
}

/// What a `count` groups by.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupByConfig {
    /// Dotted path into the value (`after.region`).
    pub field: String,
}

/// A join node: each record of a stream joined to the current row of its key in a table.
///
/// ```yaml
/// - name: enriched
///   type: join
///   from: orders
///   table: products     # a `type: table` node
///   kind: left          # inner (default) | left
///   into: product       # the stream's JSON value with the row under this field (default: the table's name)
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// The stream.
    #[serde(default)]
    pub from: Option<OneOrMany>,
    /// The table node.
    #[serde(default)]
    pub table: Option<String>,
    /// `inner` or `left`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The field of the output the table's row goes to.
    #[serde(default)]
    pub into: Option<String>,
}

/// A checked table node.
pub(super) struct PlannedTable {
    name: String,
    topic: String,
    key: SerdeRef,
    value: SerdeRef,
    cdc: bool,
}

impl TableConfig {
    pub(super) fn validate(&self, cx: &mut NodeContext<'_>) -> Option<PlannedTable> {
        let named = cx.named(&self.name);
        let topic = match &self.topic {
            None => {
                cx.error("topic", "a table needs a topic");
                None
            }
            Some(spec) => cx.topic("topic", spec),
        };
        if let Some(topic) = &topic {
            cx.reads(topic, self.value.as_ref());
        }
        let key = cx.serde("key", self.key.as_ref(), false);
        let value = cx.serde("value", self.value.as_ref(), false);
        named.then_some(())?;
        Some(PlannedTable {
            name: self.name.clone(),
            topic: topic?,
            key: key?,
            value: value?,
            cdc: self.cdc,
        })
    }
}

impl PlannedTable {
    pub(super) fn build(self, b: &TopologyBuilder) {
        if self.cdc {
            b.cdc_table(&self.name, &self.topic, self.key, self.value);
        } else {
            b.table(&self.name, &self.topic, self.key, self.value);
        }
    }
}

/// A checked count node.
pub(super) struct PlannedCount {
    name: String,
    from: String,
    group_by: Option<String>,
    windows: Option<TimeWindows>,
    suppress: bool,
}

impl CountConfig {
    pub(super) fn validate(&self, cx: &mut NodeContext<'_>) -> Option<PlannedCount> {
        let named = cx.named(&self.name);
        let from = single_upstream(cx, "count", self.from.as_ref());
        let windows = match &self.window {
            None => Some(None),
            Some(w) => {
                let late = match w.late.as_deref() {
                    None | Some("dead_letter") => Some(LatePolicy::DeadLetter),
                    Some("drop") => Some(LatePolicy::Drop),
                    Some(other) => {
                        cx.error(
                            "window.late",
                            format!("unknown late policy `{other}` (expected dead_letter or drop)"),
                        );
                        None
                    }
                };
                if w.size_ms == 0 {
                    cx.error("window.size_ms", "a window lasts at least 1 ms");
                }
                if w.advance_ms.is_some_and(|a| a == 0 || a > w.size_ms) {
                    cx.error(
                        "window.advance_ms",
                        "windows advance by more than 0 ms and at most their size",
                    );
                }
                late.filter(|_| w.size_ms > 0).map(|late| {
                    let size = Duration::from_millis(w.size_ms);
                    Some(
                        TimeWindows::hopping(
                            size,
                            w.advance_ms.map_or(size, Duration::from_millis),
                        )
                        .grace(Duration::from_millis(w.grace_ms))
                        .late_records(late),
                    )
                })
            }
        };
        if self.suppress && self.window.is_none() {
            cx.error(
                "suppress",
                "only a windowed count (with `window`) can be suppressed",
            );
        }
        if self
            .group_by
            .as_ref()
            .is_some_and(|g| g.field.trim().is_empty())
        {
            cx.error("group_by.field", "name the value field to group by");
        }
        named.then_some(())?;
        Some(PlannedCount {
            name: self.name.clone(),
            from: from?,
            group_by: self.group_by.as_ref().map(|g| g.field.clone()),
            windows: windows?,
            suppress: self.suppress && self.window.is_some(),
        })
    }
}

impl PlannedCount {
    pub(super) fn build(self, b: &TopologyBuilder) {
        let upstream = b.stream(&self.from);
        let grouped = match self.group_by {
            None => upstream.group_by_key(),
            Some(field) => upstream.group_by(&format!("{}-by", self.name), move |r| {
                r.value
                    .as_ref()
                    .and_then(|v| v.field_str(&field))
                    .map(Value::from)
            }),
        };
        match (self.windows, self.suppress) {
            (None, _) => {
                grouped.count(&self.name);
            }
            (Some(w), false) => {
                grouped.windowed_by(w).count(&self.name);
            }
            (Some(w), true) => {
                grouped
                    .windowed_by(w)
                    .count(&format!("{}-windows", self.name))
                    .suppress_until_window_closes(&self.name);
            }
        }
    }
}

/// A checked join node.
pub(super) struct PlannedJoin {
    name: String,
    from: String,
    table: String,
    kind: JoinKind,
    into: String,
}

impl JoinConfig {
    pub(super) fn validate(&self, cx: &mut NodeContext<'_>) -> Option<PlannedJoin> {
        let named = cx.named(&self.name);
        let from = single_upstream(cx, "join", self.from.as_ref());
        let table = match &self.table {
            None => {
                cx.error("table", "a join names its `table` node");
                None
            }
            Some(t) if !cx.names.contains_key(t) => {
                cx.error("table", format!("unknown table node `{t}`"));
                None
            }
            Some(t) => Some(t.clone()),
        };
        let kind = match self.kind.as_deref() {
            None | Some("inner") => Some(JoinKind::Inner),
            Some("left") => Some(JoinKind::Left),
            Some(other) => {
                cx.error(
                    "kind",
                    format!("a stream–table join is `inner` or `left`, not `{other}`"),
                );
                None
            }
        };
        named.then_some(())?;
        let table = table?;
        Some(PlannedJoin {
            name: self.name.clone(),
            from: from?,
            into: self.into.clone().unwrap_or_else(|| table.clone()),
            table,
            kind: kind?,
        })
    }
}

impl PlannedJoin {
    pub(super) fn build(self, b: &TopologyBuilder) {
        let into = self.into;
        b.stream(&self.from).join_table(
            &self.name,
            &Table::of_store(b, &self.table),
            self.kind,
            move |left, right| {
                let mut out = match left.map(Value::to_json) {
                    Some(serde_json::Value::Object(fields)) => fields,
                    Some(other) => serde_json::Map::from_iter([("value".to_owned(), other)]),
                    None => serde_json::Map::new(),
                };
                out.insert(
                    into.clone(),
                    right.map_or(serde_json::Value::Null, Value::to_json),
                );
                Value::Json(serde_json::Value::Object(out))
            },
        );
    }
}

/// The one upstream node of a node of `kind`.
fn single_upstream(
    cx: &mut NodeContext<'_>,
    kind: &str,
    from: Option<&OneOrMany>,
) -> Option<String> {
    let from = cx.upstream(kind, from)?;
    match from.as_slice() {
        [one] => Some(one.clone()),
        _ => {
            cx.error("from", format!("a {kind} node has one upstream node"));
            None
        }
    }
}
