//! The image pipeline (SPEC §3): the diff-checker, the image collector and remover, and the
//! complete-products sink, as topology files (`config/*.yaml`) whose processors are registered
//! here by name. The distributed services and the standalone mode run the same files.

mod change;
mod events;
mod metrics;
mod processors;
mod state;

use std::sync::Arc;

use topology::config::{ConfigErrors, Registry, TopologyConfig};
use topology::serdes::SchemaRegistry;

pub use change::{ProductChange, change_event, product_change};
pub use events::{IMAGE_EVENT_SCHEMA, ImageEvent, ImageEventKind, ProductFields, event_key};
pub use metrics::ImageMetrics;
pub use processors::{CompleteProductsSink, ImageCollector, ImageRemover, ImageWork};
pub use state::{CollectionFailure, PRODUCT_IMAGES_STORE, ProductImageState, ProductImages};

use crate::settings::Topics;
use crate::store::ViewStore;

/// The built-in image pipeline topology (diff-checker, collector, remover).
pub const IMAGE_PIPELINE_TOPOLOGY: &str = include_str!("../../config/image-pipeline.yaml");
/// The built-in complete-products topology (image events → view).
pub const COMPLETE_PRODUCTS_TOPOLOGY: &str = include_str!("../../config/complete-products.yaml");

/// Why a topology file could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The Debezium or image-event schemas could not be built.
    #[error("pipeline avro schemas: {0}")]
    Schemas(String),
    /// The file is wrong; every problem is listed with its place.
    #[error("{origin}:\n{errors}")]
    Config {
        /// The file.
        origin: String,
        /// What is wrong.
        errors: ConfigErrors,
    },
}

/// Registers on `registry` the topics and Avro schemas the pipeline files refer to by name
/// (`topic: {ref: cdc}`, `schema: {ref: debezium-envelope}`): the topics `cdc`, `upserts`,
/// `deletes` and `image-events` from `topics`, and the schemas `debezium-key` and
/// `debezium-envelope` (of the CDC topic's namespace) and `image-event`.
pub fn register_names(registry: &mut Registry, topics: &Topics) -> Result<(), PipelineError> {
    // Debezium names the topic `<prefix>.<db>.<collection>` and its schemas' namespace the same
    // parts made Avro-safe (`-` is legal in a topic, not in an Avro name).
    let mut parts = topics.cdc.rsplitn(3, '.');
    let (collection, db, prefix) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let namespace = connectors::debezium::avro_namespace(prefix, db, collection);
    let schemas = connectors::debezium::AvroSchemas::new(&namespace)
        .map_err(|error| PipelineError::Schemas(error.to_string()))?;
    let image_event = apache_avro::Schema::parse_str(IMAGE_EVENT_SCHEMA)
        .map_err(|error| PipelineError::Schemas(error.to_string()))?;
    registry
        .topic("cdc", &topics.cdc)
        .topic("upserts", &topics.upserts)
        .topic("deletes", &topics.deletes)
        .topic("image-events", &topics.image_events)
        .avro_schema("debezium-key", schemas.key().clone())
        .avro_schema("debezium-envelope", schemas.value().clone())
        .avro_schema("image-event", image_event);
    Ok(())
}

/// The processors the pipeline files may name: `image-collector` and `image-remover` when
/// `work` is given, `complete-products-sink` when `view` is.
pub fn registry(
    work: Option<ImageWork>,
    view: Option<ViewStore>,
    schema_registry: Arc<dyn SchemaRegistry>,
) -> Registry {
    let mut registry = Registry::new();
    registry.schema_registry(schema_registry);
    if let Some(work) = work {
        let collector = work.clone();
        registry.processor("image-collector", move |_config| {
            Ok(Arc::new(ImageCollector(collector.clone())))
        });
        registry.processor("image-remover", move |_config| {
            Ok(Arc::new(ImageRemover(work.clone())))
        });
    }
    declare_stores(&mut registry);
    if let Some(view) = view {
        registry.processor("complete-products-sink", move |_config| {
            Ok(Arc::new(CompleteProductsSink { view: view.clone() }))
        });
    }
    registry
}

/// Parses and validates a topology file against `registry` plus the pipeline's named topics
/// and schemas ([`register_names`]), reporting every problem at once; returns the topology and
/// its application id (the consumer group), when the file names one.
pub fn load(
    template: &str,
    origin: &str,
    topics: &Topics,
    registry: &Registry,
) -> Result<(topology::Topology, Option<String>), PipelineError> {
    let config_error = |errors| PipelineError::Config {
        origin: origin.to_owned(),
        errors,
    };
    let mut registry = registry.clone();
    register_names(&mut registry, topics)?;
    let config = TopologyConfig::from_yaml(template).map_err(config_error)?;
    let plan = config.validate(&registry).map_err(config_error)?;
    let application_id = plan.application_id().map(str::to_owned);
    Ok((plan.build().map_err(config_error)?, application_id))
}

/// The collector and the remover share the per-product store: a file that runs them without
/// naming it fails validation.
fn declare_stores(registry: &mut Registry) {
    for processor in ["image-collector", "image-remover"] {
        registry.processor_uses_stores(processor, &[PRODUCT_IMAGES_STORE]);
    }
}

/// A registry with every processor name but no working processors, for describing and
/// validating topology files without connecting to anything.
pub fn registry_for_validation() -> Registry {
    let mut registry = Registry::new();
    registry.schema_registry(Arc::new(topology::serdes::MemorySchemaRegistry::default()));
    for name in ["image-collector", "image-remover", "complete-products-sink"] {
        registry.processor(name, |_config| {
            Ok(topology::processor_fn(|_record| async {
                Err::<Vec<topology::Record>, _>(topology::ProcessError::permanent(
                    "validation-only processor",
                ))
            }))
        });
    }
    declare_stores(&mut registry);
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dashed_cdc_topic_still_gives_valid_avro_names() {
        let topics = Topics {
            cdc: "shop-1.catalog-db.products".into(),
            ..Topics::default()
        };
        let (topology, application_id) = load(
            IMAGE_PIPELINE_TOPOLOGY,
            "built-in",
            &topics,
            &registry_for_validation(),
        )
        .expect("loads");
        assert_eq!(
            application_id.as_deref(),
            Some("catalog-stream-image-pipeline")
        );
        assert!(topology.describe().contains("shop-1.catalog-db.products"));
    }

    #[test]
    fn the_built_in_files_name_only_registered_topics_and_schemas() {
        let topics = Topics {
            image_events: "events-1".into(),
            ..Topics::default()
        };
        let (topology, application_id) = load(
            COMPLETE_PRODUCTS_TOPOLOGY,
            "built-in",
            &topics,
            &registry_for_validation(),
        )
        .expect("loads");
        assert_eq!(
            application_id.as_deref(),
            Some("catalog-stream-complete-products")
        );
        assert!(topology.describe().contains("topics: [events-1]"));
        // A name the service does not register is an error at its line.
        let unknown = IMAGE_PIPELINE_TOPOLOGY.replace("{ref: image-event}", "{ref: image-evnt}");
        let Err(PipelineError::Config { errors, .. }) =
            load(&unknown, "edited", &topics, &registry_for_validation())
        else {
            panic!("an unknown schema name must fail");
        };
        assert!(
            errors
                .errors
                .iter()
                .all(|e| e.message.contains("unknown schema `image-evnt`") && e.line.is_some()),
            "{errors}"
        );
    }

    #[test]
    fn a_file_whose_collector_does_not_name_the_product_images_store_is_refused() {
        let without = IMAGE_PIPELINE_TOPOLOGY.replacen("    stores: [product-images]\n", "", 1);
        assert_ne!(
            without, IMAGE_PIPELINE_TOPOLOGY,
            "the edit must remove one line"
        );
        let Err(PipelineError::Config { errors, .. }) = load(
            &without,
            "edited",
            &Topics::default(),
            &registry_for_validation(),
        ) else {
            panic!("a collector without its store must fail validation");
        };
        assert!(
            errors.errors.iter().any(|e| e
                .message
                .contains("processor `image-collector` uses the store `product-images`")
                && e.line.is_some()),
            "{errors}"
        );
    }
}
