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
    /// The Debezium schemas could not be built.
    #[error("debezium schemas: {0}")]
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

/// Fills the `${...}` placeholders of a topology file: topic names, and the Avro schemas as
/// quoted JSON strings.
pub fn render(template: &str, topics: &Topics) -> Result<String, PipelineError> {
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
    let quoted = |schema: &apache_avro::Schema| -> Result<String, PipelineError> {
        let text = serde_json::to_string(schema)
            .map_err(|error| PipelineError::Schemas(error.to_string()))?;
        serde_json::to_string(&text).map_err(|error| PipelineError::Schemas(error.to_string()))
    };
    let image_event = serde_json::to_string(IMAGE_EVENT_SCHEMA)
        .map_err(|error| PipelineError::Schemas(error.to_string()))?;
    Ok(template
        .replace("${topics.cdc}", &topics.cdc)
        .replace("${topics.upserts}", &topics.upserts)
        .replace("${topics.deletes}", &topics.deletes)
        .replace("${topics.image_events}", &topics.image_events)
        .replace("${schema.debezium_key}", &quoted(schemas.key())?)
        .replace("${schema.debezium_envelope}", &quoted(schemas.value())?)
        .replace("${schema.image_event}", &image_event))
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
    if let Some(view) = view {
        registry.processor("complete-products-sink", move |_config| {
            Ok(Arc::new(CompleteProductsSink { view: view.clone() }))
        });
    }
    registry
}

/// Renders, parses and validates a topology file against `registry` (every problem at once);
/// returns the topology and its application id (the consumer group).
pub fn load(
    template: &str,
    origin: &str,
    topics: &Topics,
    registry: &Registry,
) -> Result<(topology::Topology, String), PipelineError> {
    let text = render(template, topics)?;
    let config_error = |errors| PipelineError::Config {
        origin: origin.to_owned(),
        errors,
    };
    let config = TopologyConfig::from_yaml(&text).map_err(config_error)?;
    config.validate(registry).map_err(config_error)?;
    let application_id = config
        .application_id
        .clone()
        .unwrap_or_else(|| "catalog-stream".to_owned());
    Ok((
        config.build(registry).map_err(config_error)?,
        application_id,
    ))
}

/// The `application_id` a topology file names (after rendering), if any.
pub fn application_id(template: &str, topics: &Topics) -> Result<Option<String>, PipelineError> {
    let text = render(template, topics)?;
    let config = TopologyConfig::from_yaml(&text).map_err(|errors| PipelineError::Config {
        origin: "topology file".to_owned(),
        errors,
    })?;
    Ok(config.application_id)
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
        assert_eq!(application_id, "catalog-stream-image-pipeline");
        assert!(topology.describe().contains("shop-1.catalog-db.products"));
    }
}
