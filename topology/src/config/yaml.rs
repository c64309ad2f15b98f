//! Reading a topology file: the YAML tree with every node's place in the text, serde over its
//! parts, and the line of any path (`nodes[2].retry.jitter`) looked up in that tree.
//!
//! The tree comes from `marked-yaml`, which keeps a start mark on every scalar, sequence and
//! mapping. It refuses anchors, aliases and tags, which a topology file has no use for.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};
use serde::de::DeserializeOwned;

use super::ConfigError;

/// Parses `text` into a tree whose top level is a mapping; a duplicate key is an error, and a
/// quoted scalar stays a string (`"64"`, `"true"`) as YAML means it.
pub(super) fn parse(text: &str) -> Result<Node, ConfigError> {
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true)
        .toplevel_mapping();
    marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| {
        let line = match &e {
            LoadError::TopLevelMustBeMapping(m)
            | LoadError::TopLevelMustBeSequence(m)
            | LoadError::UnexpectedAnchor(m)
            | LoadError::MappingKeyMustBeScalar(m)
            | LoadError::UnexpectedTag(m)
            | LoadError::ScanError(m, _) => Some(m.line()),
            LoadError::DuplicateKey(inner) => line_of(inner.key.span()),
        };
        ConfigError {
            path: "<document>".into(),
            line,
            message: e.to_string(),
        }
    })
}

/// Deserializes `node`; a failure names `prefix` plus the field serde was at, and its line.
pub(super) fn deserialize<T: DeserializeOwned>(
    node: &Node,
    prefix: &str,
) -> Result<T, ConfigError> {
    marked_yaml::from_node(node).map_err(|e| {
        let path = match e.path() {
            Some(p) if prefix.is_empty() => p.to_owned(),
            Some(p) => format!("{prefix}.{p}"),
            None => prefix.to_owned(),
        };
        let line = e
            .start_mark()
            .map(|m| m.line())
            .or_else(|| line_of(node.span()));
        ConfigError {
            path,
            line,
            message: e.into_inner().to_string(),
        }
    })
}

/// `mapping` without the entries under `keys` (handled by the caller), with every other
/// node's place kept.
pub(super) fn without(mapping: &MarkedMappingNode, keys: &[&str]) -> Node {
    let mut rest = mapping.clone();
    for key in keys {
        rest.remove(*key);
    }
    Node::Mapping(rest)
}

/// The 1-based line a span starts on.
pub(super) fn line_of(span: &Span) -> Option<usize> {
    span.start().map(|m| m.line())
}

/// The line of `path` (`nodes[2].retry.jitter`, `stores[1]`) in the tree: of a mapping
/// entry's key, of a sequence entry, or, where the path leaves what is written, of the deepest
/// node it reaches (a missing `topic` is reported on its node's first line).
pub(super) fn line_at(root: &Node, path: &str) -> Option<usize> {
    let mut node = root;
    let mut line = line_of(root.span());
    for segment in path.split('.') {
        let (key, indices) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !key.is_empty() {
            let Some((k, v)) = node
                .as_mapping()
                .and_then(|m| m.iter().find(|(k, _)| k.as_str() == key))
            else {
                return line;
            };
            line = line_of(k.span()).or(line);
            node = v;
        }
        for index in indices
            .split(['[', ']'])
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse::<usize>().ok())
        {
            let Some(item) = node.as_sequence().and_then(|s| s.get(index)) else {
                return line;
            };
            line = line_of(item.span()).or(line);
            node = item;
        }
    }
    line
}

/// A YAML value as JSON, for processor `config` blocks: the tree keeps scalars as text, so
/// plain (unquoted) `64`, `0.5`, `true` and `null` are typed here as a YAML reader would, and
/// quoted scalars stay strings.
pub(super) fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Scalar(s) => scalar_to_json(s),
        Node::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        Node::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
                .collect(),
        ),
    }
}

fn scalar_to_json(s: &MarkedScalarNode) -> serde_json::Value {
    use serde_json::Value;
    let text = s.as_str();
    if !s.may_coerce() {
        return Value::String(text.to_owned());
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Value::Null;
    }
    if let Some(b) = s.as_bool() {
        return Value::Bool(b);
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    if text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_owned())
}
