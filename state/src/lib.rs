//! `state`: sled-backed stores used by the topology engine.
//!
//! This crate sits at the bottom of the dependency graph: it depends on nothing else in the
//! workspace, and `topology`, `connectors` and the services depend on it.
