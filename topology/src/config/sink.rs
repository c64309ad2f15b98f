//! `type: sink`: encodes records and writes them to a topic.

use serde::Deserialize;

use super::context::NodeContext;
use super::spec::{OneOrMany, SerdeSpec, TopicSpec};
use crate::graph::{NodeKind, TopologyBuilder};
use crate::serdes::SerdeRef;

/// A sink node.
///
/// ```yaml
/// - name: events
///   type: sink
///   from: collect
///   topic: {ref: image-events}   # or a literal name
///   key: string
///   value: {type: avro, schema: {ref: image-event}}   # an avro sink names its schema
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Upstream node(s).
    #[serde(default)]
    pub from: Option<OneOrMany>,
    /// The topic written.
    #[serde(default)]
    pub topic: Option<TopicSpec>,
    /// Key serde (default `bytes`).
    #[serde(default)]
    pub key: Option<SerdeSpec>,
    /// Value serde (default `bytes`).
    #[serde(default)]
    pub value: Option<SerdeSpec>,
}

/// A checked sink, ready to be added.
pub(super) struct Planned {
    name: String,
    from: Vec<String>,
    topic: String,
    key: SerdeRef,
    value: SerdeRef,
}

impl SinkConfig {
    pub(super) fn validate(&self, cx: &mut NodeContext<'_>) -> Option<Planned> {
        let named = cx.named(&self.name);
        let from = cx.upstream("sink", self.from.as_ref());
        let topic = match &self.topic {
            None => {
                cx.error("topic", "a sink needs a topic");
                None
            }
            Some(spec) => cx.topic("topic", spec),
        };
        if let Some(topic) = &topic {
            cx.writes(topic, self.value.as_ref());
        }
        let key = cx.serde("key", self.key.as_ref(), true);
        let value = cx.serde("value", self.value.as_ref(), true);
        named.then_some(())?;
        Some(Planned {
            name: self.name.clone(),
            from: from?,
            topic: topic?,
            key: key?,
            value: value?,
        })
    }
}

impl Planned {
    pub(super) fn build(self, b: &TopologyBuilder) {
        let parents: Vec<&str> = self.from.iter().map(String::as_str).collect();
        let kind = NodeKind::Sink {
            topic: self.topic,
            key_serde: self.key,
            value_serde: self.value,
        };
        b.add_node(&self.name, kind, &parents);
    }
}
