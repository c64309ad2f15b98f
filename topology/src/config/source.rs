//! `type: source`: reads topics and decodes keys and values.

use serde::Deserialize;

use super::context::NodeContext;
use super::spec::{SerdeSpec, TopicSpec};
use crate::graph::{NodeKind, TopologyBuilder};
use crate::serdes::SerdeRef;

/// A source node.
///
/// ```yaml
/// - name: cdc
///   type: source
///   topic: {ref: cdc}          # or a literal name; or topics: [a, {ref: b}]
///   key: string                # bytes (default) | string | json | avro
///   value: avro
///   dead_letter_topic: cdc.dlq # default {topic}.dlq
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// The topic read.
    #[serde(default)]
    pub topic: Option<TopicSpec>,
    /// The topics read, when several.
    #[serde(default)]
    pub topics: Option<Vec<TopicSpec>>,
    /// Key serde (default `bytes`).
    #[serde(default)]
    pub key: Option<SerdeSpec>,
    /// Value serde (default `bytes`).
    #[serde(default)]
    pub value: Option<SerdeSpec>,
    /// Where records that cannot be decoded or processed go (default `{topic}.dlq`).
    #[serde(default)]
    pub dead_letter_topic: Option<TopicSpec>,
}

/// A checked source, ready to be added.
pub(super) struct Planned {
    name: String,
    topics: Vec<String>,
    key: SerdeRef,
    value: SerdeRef,
    dead_letter_topic: Option<String>,
}

impl SourceConfig {
    pub(super) fn validate(&self, cx: &mut NodeContext<'_>) -> Option<Planned> {
        let named = cx.named(&self.name);
        let specs: Vec<(String, &TopicSpec)> = match (&self.topic, &self.topics) {
            (Some(t), None) => vec![("topic".to_owned(), t)],
            (None, Some(ts)) => ts
                .iter()
                .enumerate()
                .map(|(j, t)| (format!("topics[{j}]"), t))
                .collect(),
            (Some(_), Some(_)) => {
                cx.error("topics", "give `topic` or `topics`, not both");
                vec![]
            }
            (None, None) => {
                cx.error("topic", "a source needs a topic");
                vec![]
            }
        };
        let mut topics = Vec::new();
        for (field, spec) in specs {
            if let Some(topic) = cx.topic(&field, spec) {
                cx.reads(&topic, self.value.as_ref());
                topics.push(topic);
            }
        }
        let dead_letter_topic = match &self.dead_letter_topic {
            None => Some(None),
            Some(spec) => cx.topic("dead_letter_topic", spec).map(Some),
        };
        let key = cx.serde("key", self.key.as_ref(), false);
        let value = cx.serde("value", self.value.as_ref(), false);
        (named && !topics.is_empty()).then_some(())?;
        Some(Planned {
            name: self.name.clone(),
            topics,
            key: key?,
            value: value?,
            dead_letter_topic: dead_letter_topic?,
        })
    }
}

impl Planned {
    pub(super) fn build(self, b: &TopologyBuilder) {
        let kind = NodeKind::Source {
            topics: self.topics,
            key_serde: self.key,
            value_serde: self.value,
            dead_letter_topic: self.dead_letter_topic,
        };
        b.add_node(&self.name, kind, &[]);
    }
}
