//! Asynchronous processors and their options.
//!
//! A [`Processor`] takes one record and returns the records it produces (zero or more), or a
//! [`ProcessError`] saying whether trying again may help ([`ProcessError::Transient`]) or not
//! ([`ProcessError::Permanent`]). The runtime runs processors concurrently under
//! [`AsyncOptions`]: a concurrency bound, an [`Ordering`] (per key by default) and a
//! [`RetryPolicy`]; records that fail for good go to the dead-letter topic.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::Record;
use crate::task::ProcessorContext;

/// Why a processor failed on a record.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProcessError {
    /// May succeed if tried again (timeouts, 5xx, connection resets).
    #[error("transient: {0}")]
    Transient(String),
    /// Will fail again (bad input, 4xx, not an image).
    #[error("permanent: {0}")]
    Permanent(String),
}

impl ProcessError {
    /// A transient error.
    pub fn transient(msg: impl Into<String>) -> Self {
        ProcessError::Transient(msg.into())
    }
    /// A permanent error.
    pub fn permanent(msg: impl Into<String>) -> Self {
        ProcessError::Permanent(msg.into())
    }
    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProcessError::Transient(_))
    }
    /// `Transient` or `Permanent`, for dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            ProcessError::Transient(_) => "Transient",
            ProcessError::Permanent(_) => "Permanent",
        }
    }
    /// The message without the class.
    pub fn message(&self) -> &str {
        match self {
            ProcessError::Transient(m) | ProcessError::Permanent(m) => m,
        }
    }
}

/// An asynchronous record processor.
///
/// # Example
/// ```
/// use futures::future::BoxFuture;
/// use topology::{ProcessError, Processor, ProcessorContext, Record, Value};
///
/// struct Upper;
/// impl Processor for Upper {
///     fn process(&self, mut record: Record, _ctx: ProcessorContext)
///         -> BoxFuture<'_, Result<Vec<Record>, ProcessError>> {
///         Box::pin(async move {
///             let text = record.value.as_ref().and_then(|v| v.as_str()).map(str::to_uppercase);
///             record.value = text.map(Value::String);
///             Ok(vec![record])
///         })
///     }
/// }
/// ```
pub trait Processor: Send + Sync + 'static {
    /// Processes one record. `ctx` is the record's task: its stores
    /// ([`ProcessorContext::store`]) are the ones the processor declared. Store writes must be
    /// made in this future (not in a task it spawns): that is how the runtime ties each
    /// write's changelog record to this record's offset.
    fn process(
        &self,
        record: Record,
        ctx: ProcessorContext,
    ) -> BoxFuture<'_, Result<Vec<Record>, ProcessError>>;
}

/// A processor made from an async closure; see [`processor_fn`].
pub struct FnProcessor<F>(F);

impl<F, Fut> Processor for FnProcessor<F>
where
    F: Fn(Record) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Record>, ProcessError>> + Send + 'static,
{
    fn process(
        &self,
        record: Record,
        _ctx: ProcessorContext,
    ) -> BoxFuture<'_, Result<Vec<Record>, ProcessError>> {
        Box::pin((self.0)(record))
    }
}

/// A processor made from an async closure that takes the record's context; see
/// [`processor_with_context`].
pub struct ContextFnProcessor<F>(F);

impl<F, Fut> Processor for ContextFnProcessor<F>
where
    F: Fn(Record, ProcessorContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Record>, ProcessError>> + Send + 'static,
{
    fn process(
        &self,
        record: Record,
        ctx: ProcessorContext,
    ) -> BoxFuture<'_, Result<Vec<Record>, ProcessError>> {
        Box::pin((self.0)(record, ctx))
    }
}

/// Wraps an async closure of a record and its [`ProcessorContext`] (for stores) as a shared
/// [`Processor`].
///
/// # Example
/// ```
/// use topology::{processor_with_context, ProcessError};
/// let p = processor_with_context(|r, ctx| async move {
///     let seen = ctx.store::<String, u64>("seen").map_err(|e| ProcessError::transient(e.to_string()))?;
///     seen.update("all", |n| Some(n.copied().unwrap_or(0) + 1)).map_err(|e| ProcessError::transient(e.to_string()))?;
///     Ok::<_, ProcessError>(vec![r])
/// });
/// # let _ = p;
/// ```
pub fn processor_with_context<F, Fut>(f: F) -> Arc<dyn Processor>
where
    F: Fn(Record, ProcessorContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Record>, ProcessError>> + Send + 'static,
{
    Arc::new(ContextFnProcessor(f))
}

/// Wraps an async closure as a shared [`Processor`].
///
/// # Example
/// ```
/// use topology::{processor_fn, ProcessError};
/// let p = processor_fn(|r| async move { Ok::<_, ProcessError>(vec![r]) });
/// # let _ = p;
/// ```
pub fn processor_fn<F, Fut>(f: F) -> Arc<dyn Processor>
where
    F: Fn(Record) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Record>, ProcessError>> + Send + 'static,
{
    Arc::new(FnProcessor(f))
}

/// Which records an async processor keeps in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Records with the same key (in the same partition) run one after another; different keys
    /// run concurrently.
    #[default]
    Key,
    /// Records of the same partition run one after another.
    Partition,
    /// No ordering; only the concurrency bound applies.
    Unordered,
}

/// Retries for transient failures: exponential backoff with jitter.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use topology::RetryPolicy;
/// let p = RetryPolicy { max_attempts: 3, initial_backoff: Duration::from_millis(10),
///                       max_backoff: Duration::from_millis(40), jitter: 0.0 };
/// assert_eq!(p.backoff(1), Duration::from_millis(10));
/// assert_eq!(p.backoff(2), Duration::from_millis(20));
/// assert_eq!(p.backoff(5), Duration::from_millis(40));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay after the first failure.
    pub initial_backoff: Duration,
    /// Upper bound of a delay.
    pub max_backoff: Duration,
    /// Random spread in `0.0..=1.0`: a delay `d` becomes a value in `d*(1-jitter) ..= d`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }
    }

    /// The delay before attempt `failed_attempts + 1`, before jitter.
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(30);
        let d = self.initial_backoff.saturating_mul(1u32 << exp);
        d.min(self.max_backoff)
    }

    /// The delay with jitter applied.
    pub fn backoff_with_jitter(&self, failed_attempts: u32) -> Duration {
        let d = self.backoff(failed_attempts);
        let j = self.jitter.clamp(0.0, 1.0);
        if j == 0.0 {
            return d;
        }
        let factor = 1.0 - j * rand::random::<f64>();
        d.mul_f64(factor)
    }
}

/// How an async processor runs.
///
/// # Example
/// ```
/// use topology::{AsyncOptions, Ordering};
/// let o = AsyncOptions { concurrency: 64, ..Default::default() };
/// assert_eq!(o.ordering, Ordering::Key);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncOptions {
    /// Ordering mode.
    pub ordering: Ordering,
    /// Records in flight at once in this node.
    pub concurrency: usize,
    /// Retries for transient errors.
    pub retry: RetryPolicy,
}

impl Default for AsyncOptions {
    fn default() -> Self {
        AsyncOptions {
            ordering: Ordering::Key,
            concurrency: 16,
            retry: RetryPolicy::default(),
        }
    }
}
