//! The checks that look across nodes: unique names, one reader per topic and matching serdes
//! between a sink and that reader, predicates on structured values, and the order nodes are
//! added in (which finds cycles).

use std::collections::{BTreeMap, HashMap};

use super::context::TopicUse;
use super::node::NodeConfig;
use super::{ConfigError, SerdeSpec, TopologyConfig};
use crate::serdes::SerdeFormat;

impl TopologyConfig {
    /// Node and branch names, each with the index of the node defining it; duplicates are
    /// reported (empty names are left to each kind's check).
    pub(super) fn names(&self, errors: &mut Vec<ConfigError>) -> HashMap<String, usize> {
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let mut own = vec![(n.name().to_owned(), "name".to_owned())];
            if let NodeConfig::Branch(b) = n {
                for (j, name) in b.branch_names().enumerate() {
                    own.push((name.to_owned(), format!("branches[{j}].name")));
                }
            }
            for (name, field) in own {
                if name.trim().is_empty() {
                    continue;
                }
                if let Some(&first) = names.get(&name) {
                    errors.push(self.error_at(
                        format!("nodes[{i}].{field}"),
                        format!("duplicate name `{name}` (first used by nodes[{first}])"),
                    ));
                } else {
                    names.insert(name, i);
                }
            }
        }
        names
    }

    /// Each topic read by one source; a sink writes a topic with the value format its reader
    /// reads.
    pub(super) fn check_topics(
        &self,
        reads: &[TopicUse],
        writes: &[TopicUse],
        errors: &mut Vec<ConfigError>,
    ) {
        let mut readers: BTreeMap<&str, &TopicUse> = BTreeMap::new();
        for r in reads {
            if let Some(first) = readers.insert(&r.topic, r) {
                errors.push(self.error_at(
                    format!("nodes[{}].topic", r.node),
                    format!(
                        "topic `{}` is already read by nodes[{}]",
                        r.topic, first.node
                    ),
                ));
            }
        }
        for w in writes {
            if let Some(r) = readers.get(w.topic.as_str())
                && r.format != w.format
            {
                errors.push(self.error_at(
                    format!("nodes[{}].value", w.node),
                    format!(
                        "serde mismatch: writes `{}` as {} but nodes[{}] reads it as {}",
                        w.topic, w.format, r.node, r.format
                    ),
                ));
            }
        }
    }

    /// Field predicates need structured values from the source upstream.
    pub(super) fn check_predicates(
        &self,
        names: &HashMap<String, usize>,
        errors: &mut Vec<ConfigError>,
    ) {
        for (i, n) in self.nodes.iter().enumerate() {
            if !matches!(n, NodeConfig::Filter(_) | NodeConfig::Branch(_)) {
                continue;
            }
            if let Some((src, f)) = self.upstream_source_format(i, names)
                && !f.is_structured()
            {
                errors.push(self.error_at(
                    format!("nodes[{i}].when"),
                    format!(
                        "serde mismatch: field predicates need json or avro values, but source \
                         nodes[{src}] reads {f}"
                    ),
                ));
            }
        }
    }

    /// The source a node's first upstream path leads to, and the value format it reads.
    fn upstream_source_format(
        &self,
        start: usize,
        names: &HashMap<String, usize>,
    ) -> Option<(usize, SerdeFormat)> {
        let mut seen = vec![false; self.nodes.len()];
        let mut cur = start;
        loop {
            if std::mem::replace(&mut seen[cur], true) {
                return None;
            }
            if let NodeConfig::Source(s) = &self.nodes[cur] {
                return SerdeSpec::format_or_bytes(s.value.as_ref()).map(|f| (cur, f));
            }
            cur = *names.get(self.nodes[cur].from().first()?)?;
        }
    }

    /// The nodes, each after its upstream ones; `Err(i)` when node `i` is on a cycle.
    pub(super) fn dependency_order(
        &self,
        names: &HashMap<String, usize>,
    ) -> Result<Vec<usize>, usize> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Unseen,
            OnStack,
            Done,
        }
        fn visit(
            cfg: &TopologyConfig,
            names: &HashMap<String, usize>,
            i: usize,
            marks: &mut [Mark],
            order: &mut Vec<usize>,
        ) -> Result<(), usize> {
            match marks[i] {
                Mark::OnStack => return Err(i),
                Mark::Done => return Ok(()),
                Mark::Unseen => {}
            }
            marks[i] = Mark::OnStack;
            for f in cfg.nodes[i].from() {
                // A branch's branches are its own nodes: the branch node is their upstream.
                if let Some(&p) = names.get(&f)
                    && p != i
                {
                    visit(cfg, names, p, marks, order)?;
                }
            }
            marks[i] = Mark::Done;
            order.push(i);
            Ok(())
        }
        let mut marks = vec![Mark::Unseen; self.nodes.len()];
        let mut order = Vec::with_capacity(self.nodes.len());
        for i in 0..self.nodes.len() {
            visit(self, names, i, &mut marks, &mut order)?;
        }
        Ok(order)
    }
}
