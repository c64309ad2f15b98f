//! `topology`: a Kafka Streams-style engine.
//!
//! A topology is a graph of sources, stateless operators, asynchronous processors and sinks,
//! declared in Rust or in a configuration file, run over Kafka (`rdkafka`) or an embedded log.
//! Depends on `state`; never on `connectors` or the services.
