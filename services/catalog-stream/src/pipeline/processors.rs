//! The pipeline's processors: `image-collector` (fetch, store, record, emit), `image-remover`
//! (delete what is stored, emit) and `complete-products-sink` (apply image events to the view).
//!
//! Each is idempotent against redelivery: a change older than the product's recorded position
//! is ignored; one at the recorded position re-emits what the state already says (the engine's
//! retry after a failed emit) without a second upload; the view applies an event only when its
//! version is newer than what it holds.

use std::sync::Arc;

use futures::future::BoxFuture;
use images::{FetchFailure, ImageFetcher, ObjectStore, RetryPolicy as FetchRetryPolicy, image_key};
use topology::{ProcessError, Processor, ProcessorContext, Record, Value};

use super::change::{ProductChange, product_change};
use super::events::{ImageEvent, ImageEventKind, ProductFields, event_key};
use super::metrics::ImageMetrics;
use super::state::{CollectionFailure, ProductImageState, ProductImages};
use crate::product::{Product, ProductKey};
use crate::store::{CollectedImage, ViewStore, now_ms};

fn transient(what: &str, error: impl std::fmt::Display) -> ProcessError {
    ProcessError::transient(format!("{what}: {error}"))
}

fn output(record: &Record, key: &ProductKey, event: &ImageEvent) -> Result<Record, ProcessError> {
    let value = serde_json::to_value(event)
        .map_err(|error| ProcessError::permanent(format!("image event: {error}")))?;
    let mut out = record.clone();
    out.key = Some(Value::String(event_key(key)));
    out.value = Some(Value::Json(value));
    Ok(out)
}

/// The prefix under which every image of a product is stored.
fn product_prefix(key: &ProductKey) -> Result<String, ProcessError> {
    let probe = image_key(&key.mall_id, &key.product_id, &"0".repeat(64), "png")
        .map_err(|error| ProcessError::permanent(format!("product key: {error}")))?;
    Ok(probe
        .rsplit_once('/')
        .map(|(prefix, _)| format!("{prefix}/"))
        .unwrap_or(probe))
}

/// What the collector and remover share. Their per-product state is not here: it is the
/// record's task store ([`ProductImages::of`]), which follows its partition.
#[derive(Clone)]
pub struct ImageWork {
    /// Fetches images under the SSRF guard and limits.
    pub fetcher: ImageFetcher,
    /// How fetches are retried.
    pub fetch_retry: FetchRetryPolicy,
    /// Where images are stored.
    pub objects: Arc<dyn ObjectStore>,
    /// Counters.
    pub metrics: ImageMetrics,
}

impl ImageWork {
    /// The image work with `fetch` limits, `retry` policy and `objects` as the store, its
    /// counters registered in `registry`.
    pub fn new(
        fetch: images::FetchConfig,
        retry: FetchRetryPolicy,
        objects: Arc<dyn ObjectStore>,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        Ok(ImageWork {
            fetcher: ImageFetcher::new(fetch)
                .map_err(|error| anyhow::anyhow!("invalid fetch settings: {error}"))?,
            fetch_retry: retry,
            objects,
            metrics: ImageMetrics::new(registry)?,
        })
    }
}

/// `image-collector`: for an upsert, fetch the image, store it under a content-addressed key,
/// record it, delete the replaced object, emit `COLLECTED` (or `FAILED` with the reason).
/// Uses the task store `product-images`.
pub struct ImageCollector(pub ImageWork);

impl Processor for ImageCollector {
    fn process(
        &self,
        record: Record,
        ctx: ProcessorContext,
    ) -> BoxFuture<'_, Result<Vec<Record>, ProcessError>> {
        Box::pin(async move {
            let change = product_change(&record)?;
            let states = ProductImages::of(&ctx)?;
            let Some(event) = self.0.collect(&states, &change).await? else {
                return Ok(Vec::new());
            };
            Ok(vec![output(&record, &change.key, &event)?])
        })
    }
}

/// `image-remover`: for a delete, remove every stored object of the product, emit `REMOVED`.
/// Uses the task store `product-images`.
pub struct ImageRemover(pub ImageWork);

impl Processor for ImageRemover {
    fn process(
        &self,
        record: Record,
        ctx: ProcessorContext,
    ) -> BoxFuture<'_, Result<Vec<Record>, ProcessError>> {
        Box::pin(async move {
            let change = product_change(&record)?;
            let states = ProductImages::of(&ctx)?;
            let Some(event) = self.0.remove(&states, &change).await? else {
                return Ok(Vec::new());
            };
            Ok(vec![output(&record, &change.key, &event)?])
        })
    }
}

fn collected_event(
    key: &ProductKey,
    product: &Product,
    version: i64,
    image: CollectedImage,
    removed_keys: Vec<String>,
) -> ImageEvent {
    ImageEvent {
        kind: ImageEventKind::Collected,
        mall_id: key.mall_id.clone(),
        product_id: key.product_id.clone(),
        version,
        product: Some(ProductFields {
            title: product.title.clone(),
            content: product.content.clone(),
            price: product.price.clone(),
            image_url: product.image_url.clone(),
        }),
        image: Some(image),
        reason_code: None,
        reason: None,
        attempts: 0,
        removed_keys,
        occurred_at_ms: now_ms(),
    }
}

fn failed_event(key: &ProductKey, version: i64, failure: &CollectionFailure) -> ImageEvent {
    ImageEvent {
        kind: ImageEventKind::Failed,
        mall_id: key.mall_id.clone(),
        product_id: key.product_id.clone(),
        version,
        product: None,
        image: None,
        reason_code: Some(failure.code.clone()),
        reason: Some(failure.reason.clone()),
        attempts: failure.attempts,
        removed_keys: Vec::new(),
        occurred_at_ms: now_ms(),
    }
}

impl ImageWork {
    /// The event the recorded state stands for (re-emitted when the same change comes again).
    fn replay(
        &self,
        key: &ProductKey,
        state: &ProductImageState,
        product: Option<&Product>,
    ) -> Option<ImageEvent> {
        if state.deleted {
            return Some(removed_event(key, state));
        }
        if let Some(failure) = &state.failure {
            return Some(failed_event(key, state.version, failure));
        }
        match (product, &state.image) {
            (Some(product), Some(image)) => Some(collected_event(
                key,
                product,
                state.version,
                image.clone(),
                state.removed_keys.clone(),
            )),
            _ => None,
        }
    }

    /// Deletes objects a recorded change meant to delete: a replay after a crash between the
    /// state write and the deletions finishes them (deleting a missing object is a no-op).
    async fn finish_removals(&self, state: &ProductImageState) -> Result<(), ProcessError> {
        let keep = state.image.as_ref().map(|image| image.key.as_str());
        for old in state
            .removed_keys
            .iter()
            .filter(|k| Some(k.as_str()) != keep)
        {
            self.objects
                .delete(old)
                .await
                .map_err(|e| transient("object store delete", e))?;
        }
        Ok(())
    }

    async fn collect(
        &self,
        states: &ProductImages,
        change: &ProductChange,
    ) -> Result<Option<ImageEvent>, ProcessError> {
        let Some((product, version)) = &change.after else {
            return Err(ProcessError::permanent("the image collector got a delete"));
        };
        let key = &change.key;
        let state_key = event_key(key);
        let current = states.get(&state_key)?.unwrap_or_default();
        if current.position > change.position {
            self.metrics.stale.inc();
            return Ok(None);
        }
        if current.position == change.position && current.version == *version {
            // The same change again: what it did is recorded; finish what it may not have
            // done, say it again, do nothing twice.
            self.finish_removals(&current).await?;
            return Ok(self.replay(key, &current, Some(product)));
        }

        let fetched = match self
            .fetcher
            .fetch_with_retry(&product.image_url, &self.fetch_retry)
            .await
        {
            Ok(fetched) => fetched,
            Err(failure) => {
                return self.record_failure(states, change, *version, &current, &failure);
            }
        };
        let image = fetched.image;
        let previous = current.image.clone().filter(|_| !current.deleted);
        let object_key = image_key(
            &key.mall_id,
            &key.product_id,
            &image.sha256,
            image.extension,
        )
        .map_err(|error| ProcessError::permanent(format!("image key: {error}")))?;
        let unchanged = previous
            .as_ref()
            .is_some_and(|stored| stored.key == object_key && stored.sha256 == image.sha256);
        let stored_image = match (&previous, unchanged) {
            (Some(stored), true) => {
                self.metrics.uploads_skipped.inc();
                stored.clone()
            }
            _ => {
                let size = image.bytes.len();
                // Keys are content-addressed: an object already under this key holds these
                // very bytes (uploaded before a crash let the state record it), so a replay
                // does not upload it again.
                let present = self
                    .objects
                    .exists(&object_key)
                    .await
                    .map_err(|e| transient("object store exists", e))?;
                if present {
                    self.metrics.uploads_skipped.inc();
                } else {
                    self.objects
                        .put(&object_key, image.bytes.clone(), image.content_type)
                        .await
                        .map_err(|e| transient("object store put", e))?;
                    self.metrics.uploads.inc();
                    tracing::debug!(key = %object_key, size, "stored image object");
                }
                let http_url = self
                    .objects
                    .http_url(&object_key)
                    .await
                    .map_err(|e| transient("object store url", e))?
                    .unwrap_or_else(|| self.objects.uri(&object_key));
                CollectedImage {
                    uri: self.objects.uri(&object_key),
                    http_url,
                    key: object_key.clone(),
                    content_type: image.content_type.to_owned(),
                    size: i64::try_from(size).unwrap_or(i64::MAX),
                    sha256: image.sha256.clone(),
                    collected_at_ms: now_ms(),
                }
            }
        };
        let removed_keys: Vec<String> = previous
            .iter()
            .filter(|stored| stored.key != object_key)
            .map(|stored| stored.key.clone())
            .collect();
        let next = ProductImageState {
            position: change.position,
            version: *version,
            image: Some(stored_image.clone()),
            failure: None,
            deleted: false,
            removed_keys: removed_keys.clone(),
        };
        let written = states.advance(&state_key, &next)?;
        if !written {
            // A newer change (a deletion, or a later update) won while we fetched: what we
            // uploaded is nobody's, unless it is the very object recorded now.
            if !unchanged {
                self.delete_unless_recorded(states, &state_key, &object_key)
                    .await?;
            }
            self.metrics.stale.inc();
            return Ok(None);
        }
        for old in &removed_keys {
            self.objects
                .delete(old)
                .await
                .map_err(|e| transient("object store delete", e))?;
            self.metrics.objects_deleted.inc();
        }
        // No flush here: the runtime flushes the state directory before it commits the
        // offset past this record (`Runtime::with_state_dir`); until then a crash replays it.
        self.metrics.collected.inc();
        Ok(Some(collected_event(
            key,
            product,
            *version,
            stored_image,
            removed_keys,
        )))
    }

    fn record_failure(
        &self,
        states: &ProductImages,
        change: &ProductChange,
        version: i64,
        current: &ProductImageState,
        failure: &FetchFailure,
    ) -> Result<Option<ImageEvent>, ProcessError> {
        let reason = CollectionFailure {
            code: failure.code().to_owned(),
            reason: failure.reason(),
            attempts: i64::from(failure.attempts),
        };
        // The previous image stays recorded (and stored) until the product is deleted or a
        // later version is collected; only the view hides the product.
        let next = ProductImageState {
            position: change.position,
            version,
            image: current.image.clone().filter(|_| !current.deleted),
            failure: Some(reason.clone()),
            deleted: false,
            removed_keys: Vec::new(),
        };
        let state_key = event_key(&change.key);
        if !states.advance(&state_key, &next)? {
            self.metrics.stale.inc();
            return Ok(None);
        }
        self.metrics
            .failed
            .with_label_values(&[failure.code()])
            .inc();
        Ok(Some(failed_event(&change.key, version, &reason)))
    }

    async fn delete_unless_recorded(
        &self,
        states: &ProductImages,
        state_key: &str,
        object_key: &str,
    ) -> Result<(), ProcessError> {
        let recorded = states
            .get(state_key)?
            .and_then(|state| state.image)
            .is_some_and(|image| image.key == object_key);
        if !recorded {
            self.objects
                .delete(object_key)
                .await
                .map_err(|e| transient("object store delete", e))?;
            self.metrics.objects_deleted.inc();
        }
        Ok(())
    }

    async fn remove(
        &self,
        states: &ProductImages,
        change: &ProductChange,
    ) -> Result<Option<ImageEvent>, ProcessError> {
        let key = &change.key;
        let state_key = event_key(key);
        let current = states.get(&state_key)?.unwrap_or_default();
        if current.position > change.position {
            self.metrics.stale.inc();
            return Ok(None);
        }
        // Record the deletion first: a collection still in flight then sees it and removes what
        // it uploads. Then delete what is recorded and anything else under the product's prefix.
        let mut next = ProductImageState {
            position: change.position,
            version: current.version,
            image: None,
            failure: None,
            deleted: true,
            removed_keys: Vec::new(),
        };
        if !states.advance(&state_key, &next)? {
            self.metrics.stale.inc();
            return Ok(None);
        }
        let mut doomed: Vec<String> = current
            .image
            .iter()
            .map(|image| image.key.clone())
            .collect();
        let listed = self
            .objects
            .list(&product_prefix(key)?)
            .await
            .map_err(|e| transient("object store list", e))?;
        doomed.extend(listed);
        doomed.sort();
        doomed.dedup();
        for object in &doomed {
            self.objects
                .delete(object)
                .await
                .map_err(|e| transient("object store delete", e))?;
            self.metrics.objects_deleted.inc();
        }
        if !doomed.is_empty() || !current.removed_keys.is_empty() {
            next.removed_keys = doomed;
            states.advance(&state_key, &next)?;
        }
        self.metrics.removed.inc();
        Ok(Some(removed_event(key, &next)))
    }
}

fn removed_event(key: &ProductKey, state: &ProductImageState) -> ImageEvent {
    ImageEvent {
        kind: ImageEventKind::Removed,
        mall_id: key.mall_id.clone(),
        product_id: key.product_id.clone(),
        // Past the last version the pipeline saw, so the view drops it; a product created
        // again later has a far larger (clock-based) version.
        version: state.version.saturating_add(1),
        product: None,
        image: None,
        reason_code: None,
        reason: None,
        attempts: 0,
        removed_keys: state.removed_keys.clone(),
        occurred_at_ms: now_ms(),
    }
}

/// `complete-products-sink`: applies image events to the view.
pub struct CompleteProductsSink {
    /// The view.
    pub view: ViewStore,
}

impl Processor for CompleteProductsSink {
    fn process(
        &self,
        record: Record,
        _ctx: ProcessorContext,
    ) -> BoxFuture<'_, Result<Vec<Record>, ProcessError>> {
        Box::pin(async move {
            let value = record
                .value
                .as_ref()
                .ok_or_else(|| ProcessError::permanent("an image event without a value"))?;
            let event: ImageEvent = value
                .deserialize_into()
                .map_err(|error| ProcessError::permanent(format!("not an image event: {error}")))?;
            let change = event.view_change().map_err(ProcessError::permanent)?;
            self.view
                .apply(&change)
                .await
                .map_err(|e| transient("view store", e))?;
            Ok(Vec::new())
        })
    }
}
