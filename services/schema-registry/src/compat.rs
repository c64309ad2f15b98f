//! Compatibility levels and the check behind them, built on
//! [`apache_avro::schema_compatibility`].
//!
//! `BACKWARD` means the new schema can read data written with the previous one, `FORWARD` that
//! the previous schema can read data written with the new one, `FULL` both; the `_TRANSITIVE`
//! variants check every live version instead of only the latest. A partial match (for example a
//! writer union with a branch the reader lacks) counts as incompatible, as in Avro's Java checker.

use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;

/// A subject's (or the registry's global) compatibility rule.
///
/// # Example
///
/// ```
/// use schema_registry::CompatibilityLevel;
///
/// let level: CompatibilityLevel = "full_transitive".parse().unwrap();
/// assert_eq!(level, CompatibilityLevel::FullTransitive);
/// assert_eq!(level.to_string(), "FULL_TRANSITIVE");
/// assert_eq!(CompatibilityLevel::default(), CompatibilityLevel::Backward);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    /// No check.
    None,
    /// The new schema reads data written with the latest one (Confluent's default).
    #[default]
    Backward,
    /// The new schema reads data written with every live version.
    BackwardTransitive,
    /// The latest schema reads data written with the new one.
    Forward,
    /// Every live version reads data written with the new one.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every live version.
    FullTransitive,
}

impl CompatibilityLevel {
    /// The level as Confluent spells it (`BACKWARD_TRANSITIVE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Whether the check covers every live version rather than only the latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "NONE" => Self::None,
            "BACKWARD" => Self::Backward,
            "BACKWARD_TRANSITIVE" => Self::BackwardTransitive,
            "FORWARD" => Self::Forward,
            "FORWARD_TRANSITIVE" => Self::ForwardTransitive,
            "FULL" => Self::Full,
            "FULL_TRANSITIVE" => Self::FullTransitive,
            _ => return Err(RegistryError::InvalidCompatibilityLevel(s.to_owned())),
        })
    }
}

/// Checks `new` against `previous` (oldest first) under `level`.
///
/// Returns one message per violation; an empty vector means compatible. A non-transitive level
/// looks only at the last element of `previous`.
///
/// # Example
///
/// ```
/// use apache_avro::Schema;
/// use schema_registry::{CompatibilityLevel, compat::check};
///
/// let v1 = Schema::parse_str(r#"{"type":"record","name":"P","fields":[{"name":"a","type":"long"}]}"#).unwrap();
/// // A new field without a default cannot be read from old data: not backward compatible.
/// let v2 = Schema::parse_str(r#"{"type":"record","name":"P","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#).unwrap();
/// assert!(!check(CompatibilityLevel::Backward, &v2, &[v1.clone()]).is_empty());
/// assert!(check(CompatibilityLevel::Forward, &v2, &[v1]).is_empty());
/// ```
pub fn check(level: CompatibilityLevel, new: &Schema, previous: &[Schema]) -> Vec<String> {
    let against: &[Schema] = if level.transitive() {
        previous
    } else {
        match previous.split_last() {
            Some((last, _)) => std::slice::from_ref(last),
            None => &[],
        }
    };
    let mut problems = Vec::new();
    for old in against {
        if level.backward()
            && let Some(problem) = can_read(old, new)
        {
            problems.push(format!(
                "BACKWARD: the new schema cannot read data written with an earlier one: {problem}"
            ));
        }
        if level.forward()
            && let Some(problem) = can_read(new, old)
        {
            problems.push(format!(
                "FORWARD: an earlier schema cannot read data written with the new one: {problem}"
            ));
        }
    }
    problems
}

fn can_read(writer: &Schema, reader: &Schema) -> Option<String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => None,
        Ok(Compatibility::Partial) => Some(
            "only some of the writer's values can be read (a union or enum does not fully overlap)"
                .to_owned(),
        ),
        Err(e) => Some(e.to_string()),
    }
}
