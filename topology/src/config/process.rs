//! `type: process`: runs an async processor registered in code, with its concurrency,
//! ordering, retries and the state stores it reaches through its context.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::Registry;
use super::context::NodeContext;
use super::spec::OneOrMany;
use crate::graph::{NodeKind, TopologyBuilder};
use crate::processor::{AsyncOptions, Ordering, Processor, RetryPolicy};

/// A process node.
///
/// ```yaml
/// - name: collect
///   type: process
///   from: upserts
///   processor: image-collector   # Registry::processor("image-collector", factory)
///   config: {bucket: images}     # handed to the factory, as JSON
///   concurrency: 64
///   ordering: key                # key (default) | partition | unordered
///   retry: {max_attempts: 5, initial_backoff_ms: 100, max_backoff_ms: 10000, jitter: 0.2}
///   stores: [seen]               # declared under the top-level `stores`
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Upstream node(s).
    #[serde(default)]
    pub from: Option<OneOrMany>,
    /// The registered processor.
    #[serde(default)]
    pub processor: Option<String>,
    /// Processor settings, handed to its factory.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Records in flight at once.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// `key`, `partition` or `unordered`.
    #[serde(default)]
    pub ordering: Option<String>,
    /// Retries of transient failures.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Stores the processor uses, by name (declared under the top-level `stores`).
    #[serde(default)]
    pub stores: Option<Vec<String>>,
}

/// Retry settings in the file; what is left out keeps [`RetryPolicy::default`].
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in total.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// First backoff, ms.
    #[serde(default)]
    pub initial_backoff_ms: Option<u64>,
    /// Maximum backoff, ms.
    #[serde(default)]
    pub max_backoff_ms: Option<u64>,
    /// Jitter in 0..=1.
    #[serde(default)]
    pub jitter: Option<f64>,
}

impl RetryConfig {
    fn validate(&self, cx: &mut NodeContext<'_>) -> Option<RetryPolicy> {
        let mut ok = true;
        if self.max_attempts == Some(0) {
            cx.error("retry.max_attempts", "max_attempts must be at least 1");
            ok = false;
        }
        if let Some(j) = self.jitter
            && !(0.0..=1.0).contains(&j)
        {
            cx.error("retry.jitter", format!("jitter {j} is outside 0..=1"));
            ok = false;
        }
        if let (Some(a), Some(b)) = (self.initial_backoff_ms, self.max_backoff_ms)
            && a > b
        {
            cx.error(
                "retry.initial_backoff_ms",
                format!("initial backoff {a} ms exceeds max backoff {b} ms"),
            );
            ok = false;
        }
        let d = RetryPolicy::default();
        ok.then(|| RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts),
            initial_backoff: self
                .initial_backoff_ms
                .map_or(d.initial_backoff, Duration::from_millis),
            max_backoff: self
                .max_backoff_ms
                .map_or(d.max_backoff, Duration::from_millis),
            jitter: self.jitter.unwrap_or(d.jitter),
        })
    }
}

fn parse_ordering(s: &str) -> Option<Ordering> {
    match s {
        "key" => Some(Ordering::Key),
        "partition" => Some(Ordering::Partition),
        "unordered" => Some(Ordering::Unordered),
        _ => None,
    }
}

/// A checked process node with its processor built (once), ready to be added.
pub(super) struct Planned {
    name: String,
    from: Vec<String>,
    processor: Arc<dyn Processor>,
    options: AsyncOptions,
    stores: Vec<String>,
}

impl ProcessConfig {
    /// The stores it names (checked against the declared ones by the whole-file check).
    pub(super) fn store_names(&self) -> &[String] {
        self.stores.as_deref().unwrap_or_default()
    }

    pub(super) fn validate(&self, cx: &mut NodeContext<'_>) -> Option<Planned> {
        let named = cx.named(&self.name);
        let from = cx.upstream("process", self.from.as_ref());
        let processor = match &self.processor {
            None => {
                cx.error("processor", "a process node needs `processor`");
                None
            }
            Some(p) => match cx.registry.processors.get(p) {
                None => {
                    let known = Registry::known(&cx.registry.processors);
                    cx.error(
                        "processor",
                        format!("unknown processor `{p}` (registered: {known})"),
                    );
                    None
                }
                Some(factory) => {
                    match factory(self.config.as_ref().unwrap_or(&serde_json::Value::Null)) {
                        Ok(processor) => Some(processor),
                        Err(e) => {
                            cx.error("config", format!("processor `{p}` rejects its config: {e}"));
                            None
                        }
                    }
                }
            },
        };
        if let Some(needed) = self.processor.as_ref().and_then(|p| {
            cx.registry
                .processor_stores
                .get(p)
                .map(|stores| (p, stores))
        }) {
            let (p, needed) = needed;
            for store in needed {
                if !self.store_names().contains(store) {
                    cx.error(
                        "stores",
                        format!(
                            "processor `{p}` uses the store `{store}`: name it in this node's \
                             `stores` (and declare it under the top-level `stores`)"
                        ),
                    );
                }
            }
        }
        let defaults = AsyncOptions::default();
        let concurrency = match self.concurrency {
            Some(0) => {
                cx.error("concurrency", "concurrency must be at least 1");
                None
            }
            c => Some(c.unwrap_or(defaults.concurrency)),
        };
        let ordering = match self.ordering.as_deref().map(|o| (o, parse_ordering(o))) {
            None => Some(defaults.ordering),
            Some((_, Some(ordering))) => Some(ordering),
            Some((o, None)) => {
                cx.error(
                    "ordering",
                    format!("unknown ordering `{o}` (expected key, partition or unordered)"),
                );
                None
            }
        };
        let retry = match &self.retry {
            None => Some(defaults.retry),
            Some(r) => r.validate(cx),
        };
        named.then_some(())?;
        Some(Planned {
            name: self.name.clone(),
            from: from?,
            processor: processor?,
            options: AsyncOptions {
                ordering: ordering?,
                concurrency: concurrency?,
                retry: retry?,
            },
            stores: self.store_names().to_vec(),
        })
    }
}

impl Planned {
    pub(super) fn build(self, b: &TopologyBuilder) {
        let parents: Vec<&str> = self.from.iter().map(String::as_str).collect();
        let kind = NodeKind::Async {
            processor: self.processor,
            options: self.options,
            stores: self.stores,
        };
        b.add_node(&self.name, kind, &parents);
    }
}
