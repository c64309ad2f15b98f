//! The image pipeline's own metrics, beside the engine's per-node figures.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Counters of what the image processors did.
#[derive(Clone)]
pub struct ImageMetrics {
    /// Images collected (stored or found unchanged).
    pub collected: IntCounter,
    /// Collections failed for good, by reason code.
    pub failed: IntCounterVec,
    /// Products whose images were removed.
    pub removed: IntCounter,
    /// Objects uploaded.
    pub uploads: IntCounter,
    /// Uploads skipped because the bytes were unchanged.
    pub uploads_skipped: IntCounter,
    /// Objects deleted.
    pub objects_deleted: IntCounter,
    /// Stale or repeated changes ignored.
    pub stale: IntCounter,
}

impl ImageMetrics {
    /// Creates and registers the counters.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            collected: IntCounter::new(
                "catalog_images_collected_total",
                "Product images collected (stored, or unchanged and kept)",
            )?,
            failed: IntCounterVec::new(
                Opts::new(
                    "catalog_images_failed_total",
                    "Product image collections that failed for good, by reason",
                ),
                &["reason"],
            )?,
            removed: IntCounter::new(
                "catalog_images_removed_total",
                "Deleted products whose stored images were removed",
            )?,
            uploads: IntCounter::new("catalog_image_uploads_total", "Objects uploaded")?,
            uploads_skipped: IntCounter::new(
                "catalog_image_uploads_skipped_total",
                "Uploads skipped because the image bytes were unchanged",
            )?,
            objects_deleted: IntCounter::new(
                "catalog_image_objects_deleted_total",
                "Stored objects deleted (replaced or removed images)",
            )?,
            stale: IntCounter::new(
                "catalog_image_changes_stale_total",
                "Changes ignored because a newer change of the product was already applied",
            )?,
        };
        registry.register(Box::new(metrics.collected.clone()))?;
        registry.register(Box::new(metrics.failed.clone()))?;
        registry.register(Box::new(metrics.removed.clone()))?;
        registry.register(Box::new(metrics.uploads.clone()))?;
        registry.register(Box::new(metrics.uploads_skipped.clone()))?;
        registry.register(Box::new(metrics.objects_deleted.clone()))?;
        registry.register(Box::new(metrics.stale.clone()))?;
        Ok(metrics)
    }
}
