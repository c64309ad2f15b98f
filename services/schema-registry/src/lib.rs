//! A small Confluent-compatible Schema Registry.
