//! The registry itself: subjects, their versions, global schema ids and compatibility settings.
//!
//! State lives in memory behind a mutex; with a data directory every change is first written to
//! one sled tree in a single atomic batch (and flushed), then applied in memory, so a crash never
//! leaves a half-registered schema and a reopened registry hands out the same ids.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::compat::{self, CompatibilityLevel};
use crate::error::{RegistryError, Result};

/// The only schema type this registry implements.
pub const AVRO: &str = "AVRO";

/// A version selector: a number or `latest` (`-1` also means latest, as in Confluent).
///
/// # Example
///
/// ```
/// use schema_registry::VersionSpec;
///
/// assert_eq!("latest".parse::<VersionSpec>().unwrap(), VersionSpec::Latest);
/// assert_eq!("-1".parse::<VersionSpec>().unwrap(), VersionSpec::Latest);
/// assert_eq!("3".parse::<VersionSpec>().unwrap(), VersionSpec::Number(3));
/// assert!("0".parse::<VersionSpec>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    /// The newest live version.
    Latest,
    /// One version number (1-based).
    Number(u32),
}

impl FromStr for VersionSpec {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("latest") || s == "-1" {
            return Ok(Self::Latest);
        }
        match s.parse::<u32>() {
            Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(Self::Number(n)),
            _ => Err(RegistryError::InvalidVersion(s.to_owned())),
        }
    }
}

/// One version of one subject, as `GET /subjects/{subject}/versions/{version}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectVersion {
    /// The subject.
    pub subject: String,
    /// The global schema id.
    pub id: u32,
    /// The version within the subject.
    pub version: u32,
    /// The schema text.
    pub schema: String,
}

/// A (subject, version) pair that uses a given schema id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectVersionRef {
    /// The subject.
    pub subject: String,
    /// The version within the subject.
    pub version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSchema {
    /// The schema as first registered, compacted.
    schema: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct VersionRecord {
    version: u32,
    id: u32,
    deleted: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SubjectRecord {
    /// Ascending by version.
    versions: Vec<VersionRecord>,
    compatibility: Option<CompatibilityLevel>,
}

impl SubjectRecord {
    fn live(&self) -> impl DoubleEndedIterator<Item = &VersionRecord> {
        self.versions.iter().filter(|v| !v.deleted)
    }

    fn visible(&self, include_deleted: bool) -> impl DoubleEndedIterator<Item = &VersionRecord> {
        self.versions
            .iter()
            .filter(move |v| include_deleted || !v.deleted)
    }

    fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.compatibility.is_none()
    }
}

#[derive(Debug, Default)]
struct State {
    schemas: BTreeMap<u32, StoredSchema>,
    parsed: HashMap<u32, Schema>,
    by_key: HashMap<String, u32>,
    subjects: BTreeMap<String, SubjectRecord>,
    global: CompatibilityLevel,
    next_id: u32,
}

/// A change computed under the lock, persisted, then applied.
#[derive(Default)]
struct Change {
    new_schema: Option<(u32, StoredSchema, Schema, String)>,
    /// `None` removes the subject.
    subjects: Vec<(String, Option<SubjectRecord>)>,
    global: Option<CompatibilityLevel>,
}

/// A Confluent-compatible schema registry, in memory or persisted in sled.
///
/// Thread-safe; share it with `Arc`.
///
/// # Example
///
/// ```
/// use schema_registry::Registry;
///
/// let registry = Registry::in_memory();
/// let schema = r#"{"type":"record","name":"Product","fields":[{"name":"id","type":"string"}]}"#;
/// let id = registry.register("products-value", schema).unwrap();
/// // The same schema under another subject shares the global id.
/// assert_eq!(registry.register("other-value", schema).unwrap(), id);
/// assert_eq!(registry.lookup("products-value", schema).unwrap().version, 1);
/// assert!(registry.schema_by_id(id).unwrap().contains("Product"));
/// ```
#[derive(Debug)]
pub struct Registry {
    state: Mutex<State>,
    store: Option<sled::Tree>,
}

const KEY_GLOBAL: &[u8] = b"meta/global";
const KEY_NEXT_ID: &[u8] = b"meta/next_id";
const PREFIX_SCHEMA: &[u8] = b"schema/";
const PREFIX_SUBJECT: &[u8] = b"subject/";

/// Opens sled through `state`'s opener, which waits for the file lock an earlier handle in this
/// process is still releasing (a restart in place, or a test reopening).
fn open_db(dir: &Path) -> Result<sled::Db> {
    open_db_with(dir, None)
}

/// [`open_db`] with sled's page cache limited to `cache_bytes` when given.
fn open_db_with(dir: &Path, cache_bytes: Option<u64>) -> Result<sled::Db> {
    let mut config = sled::Config::new().path(dir);
    if let Some(bytes) = cache_bytes {
        config = config.cache_capacity(bytes);
    }
    Ok(state::open_sled(&config)?)
}

fn prefixed(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(rest);
    key
}

fn corrupt(key: &[u8], reason: impl ToString) -> RegistryError {
    RegistryError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

/// Parses an Avro schema and returns it with its identity key and the compact text to store.
///
/// Two schema texts with the same key are the same schema (whitespace and JSON key order do not
/// matter; docs, defaults and custom properties do).
fn normalize(schema: &str) -> Result<(Schema, String, String)> {
    if schema.trim().is_empty() {
        return Err(RegistryError::InvalidSchema("Empty schema".to_owned()));
    }
    let parsed = Schema::parse_str(schema).map_err(|e| RegistryError::InvalidSchema(chain(&e)))?;
    let key =
        serde_json::to_string(&parsed).map_err(|e| RegistryError::InvalidSchema(chain(&e)))?;
    Ok((parsed, key, compact_json(schema)))
}

/// An error with its sources, `outer: inner: innermost`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Removes the whitespace between JSON tokens, keeping key order and string contents.
fn compact_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Checks a request's `schemaType` and `references` before anything else.
///
/// # Example
///
/// ```
/// use schema_registry::registry::check_schema_type;
///
/// assert!(check_schema_type(None, 0).is_ok());
/// assert!(check_schema_type(Some("avro"), 0).is_ok());
/// assert_eq!(check_schema_type(Some("PROTOBUF"), 0).unwrap_err().error_code(), 42201);
/// assert!(check_schema_type(None, 1).is_err());
/// ```
pub fn check_schema_type(schema_type: Option<&str>, references: usize) -> Result<()> {
    if let Some(t) = schema_type
        && !t.eq_ignore_ascii_case(AVRO)
    {
        return Err(RegistryError::UnsupportedSchemaType(t.to_owned()));
    }
    if references > 0 {
        return Err(RegistryError::ReferencesUnsupported);
    }
    Ok(())
}

impl Default for Registry {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl Registry {
    /// A registry that lives only in memory.
    pub fn in_memory() -> Self {
        Self {
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            store: None,
        }
    }

    /// Opens (or creates) a registry persisted in sled under `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let db = open_db(dir.as_ref())?;
        Self::from_db(dir.as_ref(), db)
    }

    /// Like [`Registry::open`] with sled's page cache limited to `cache_bytes` (sled's default
    /// is 1 GiB per database).
    pub fn open_with(dir: impl AsRef<Path>, cache_bytes: u64) -> Result<Self> {
        let db = open_db_with(dir.as_ref(), Some(cache_bytes))?;
        Self::from_db(dir.as_ref(), db)
    }

    fn from_db(dir: &Path, db: sled::Db) -> Result<Self> {
        let tree = db.open_tree("schema-registry")?;
        let mut state = State {
            next_id: 1,
            ..State::default()
        };
        for item in tree.iter() {
            let (key, value) = item?;
            if key.as_ref() == KEY_GLOBAL {
                let text = std::str::from_utf8(&value).map_err(|e| corrupt(&key, e))?;
                state.global = text.parse().map_err(|e| corrupt(&key, e))?;
            } else if key.as_ref() == KEY_NEXT_ID {
                let bytes: [u8; 4] = value.as_ref().try_into().map_err(|e| corrupt(&key, e))?;
                state.next_id = u32::from_be_bytes(bytes);
            } else if let Some(id) = key.strip_prefix(PREFIX_SCHEMA) {
                let id: [u8; 4] = id.try_into().map_err(|e| corrupt(&key, e))?;
                let id = u32::from_be_bytes(id);
                let stored: StoredSchema =
                    serde_json::from_slice(&value).map_err(|e| corrupt(&key, e))?;
                let (parsed, norm_key, _) =
                    normalize(&stored.schema).map_err(|e| corrupt(&key, e))?;
                state.by_key.insert(norm_key, id);
                state.parsed.insert(id, parsed);
                state.schemas.insert(id, stored);
            } else if let Some(name) = key.strip_prefix(PREFIX_SUBJECT) {
                let name = String::from_utf8(name.to_vec()).map_err(|e| corrupt(&key, e))?;
                let record: SubjectRecord =
                    serde_json::from_slice(&value).map_err(|e| corrupt(&key, e))?;
                state.subjects.insert(name, record);
            }
        }
        let max_id = state.schemas.keys().next_back().copied().unwrap_or(0);
        state.next_id = state.next_id.max(max_id + 1);
        tracing::debug!(
            dir = %dir.display(),
            schemas = state.schemas.len(),
            subjects = state.subjects.len(),
            "opened schema registry store"
        );
        Ok(Self {
            state: Mutex::new(state),
            store: Some(tree),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only changed after a change has been fully computed and persisted, so a
        // panic elsewhere while holding the lock cannot leave it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Persists `change` (if backed by sled), then applies it to `state`.
    fn commit(&self, state: &mut State, change: Change) -> Result<()> {
        if let Some(tree) = &self.store {
            let mut batch = sled::Batch::default();
            if let Some((id, stored, _, _)) = &change.new_schema {
                let value = serde_json::to_vec(stored)
                    .map_err(|e| corrupt(&prefixed(PREFIX_SCHEMA, &id.to_be_bytes()), e))?;
                batch.insert(prefixed(PREFIX_SCHEMA, &id.to_be_bytes()), value);
                batch.insert(KEY_NEXT_ID, &(id + 1).to_be_bytes());
            }
            for (name, record) in &change.subjects {
                let key = prefixed(PREFIX_SUBJECT, name.as_bytes());
                match record {
                    Some(record) if !record.is_empty() => {
                        let value = serde_json::to_vec(record).map_err(|e| corrupt(&key, e))?;
                        batch.insert(key, value);
                    }
                    _ => batch.remove(key),
                }
            }
            if let Some(level) = change.global {
                batch.insert(KEY_GLOBAL, level.as_str().as_bytes());
            }
            tree.apply_batch(batch)?;
            tree.flush()?;
        }
        if let Some((id, stored, parsed, key)) = change.new_schema {
            state.schemas.insert(id, stored);
            state.parsed.insert(id, parsed);
            state.by_key.insert(key, id);
            state.next_id = id + 1;
        }
        for (name, record) in change.subjects {
            match record {
                Some(record) if !record.is_empty() => {
                    state.subjects.insert(name, record);
                }
                _ => {
                    state.subjects.remove(&name);
                }
            }
        }
        if let Some(level) = change.global {
            state.global = level;
        }
        Ok(())
    }

    /// Registers `schema` (Avro) under `subject` and returns its global id.
    ///
    /// Registering a schema the subject already has returns the existing id; a schema already
    /// registered under another subject reuses that id. A schema that breaks the subject's
    /// compatibility level is refused with [`RegistryError::Incompatible`].
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let (parsed, key, compact) = normalize(schema)?;
        let mut state = self.lock();
        let existing_id = state.by_key.get(&key).copied();
        let record = state.subjects.get(subject).cloned().unwrap_or_default();
        if let Some(id) = existing_id
            && record.live().any(|v| v.id == id)
        {
            return Ok(id);
        }
        let level = record.compatibility.unwrap_or(state.global);
        if level != CompatibilityLevel::None {
            let previous = live_schemas(&state, &record);
            let problems = compat::check(level, &parsed, &previous);
            if !problems.is_empty() {
                return Err(RegistryError::Incompatible {
                    subject: subject.to_owned(),
                    details: problems,
                });
            }
        }
        let mut change = Change::default();
        let id = match existing_id {
            Some(id) => id,
            None => {
                let id = state.next_id;
                change.new_schema = Some((id, StoredSchema { schema: compact }, parsed, key));
                id
            }
        };
        let mut record = record;
        let version = record.versions.last().map_or(1, |v| v.version + 1);
        record.versions.push(VersionRecord {
            version,
            id,
            deleted: false,
        });
        change.subjects.push((subject.to_owned(), Some(record)));
        self.commit(&mut state, change)?;
        tracing::debug!(subject, id, version, "registered schema");
        Ok(id)
    }

    /// Finds `schema` among the subject's versions (`POST /subjects/{subject}`).
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<SubjectVersion> {
        self.lookup_with(subject, schema, false)
    }

    /// [`Registry::lookup`], optionally also matching soft-deleted versions.
    pub fn lookup_with(
        &self,
        subject: &str,
        schema: &str,
        include_deleted: bool,
    ) -> Result<SubjectVersion> {
        let (_, key, _) = normalize(schema)?;
        let state = self.lock();
        let record = subject_record(&state, subject, include_deleted)?;
        let id = state
            .by_key
            .get(&key)
            .copied()
            .ok_or(RegistryError::SchemaNotFound)?;
        let v = record
            .visible(include_deleted)
            .rev()
            .find(|v| v.id == id)
            .ok_or(RegistryError::SchemaNotFound)?;
        Ok(subject_version(&state, subject, v))
    }

    /// The schema text registered under `id`.
    pub fn schema_by_id(&self, id: u32) -> Result<String> {
        let state = self.lock();
        state
            .schemas
            .get(&id)
            .map(|s| s.schema.clone())
            .ok_or(RegistryError::SchemaIdNotFound(id))
    }

    /// The parsed Avro schema registered under `id`.
    pub fn parsed_schema_by_id(&self, id: u32) -> Result<Schema> {
        let state = self.lock();
        state
            .parsed
            .get(&id)
            .cloned()
            .ok_or(RegistryError::SchemaIdNotFound(id))
    }

    /// The (subject, version) pairs that use schema `id`.
    pub fn versions_of_id(&self, id: u32, include_deleted: bool) -> Result<Vec<SubjectVersionRef>> {
        let state = self.lock();
        if !state.schemas.contains_key(&id) {
            return Err(RegistryError::SchemaIdNotFound(id));
        }
        Ok(state
            .subjects
            .iter()
            .flat_map(|(subject, record)| {
                record
                    .visible(include_deleted)
                    .filter(|v| v.id == id)
                    .map(|v| SubjectVersionRef {
                        subject: subject.clone(),
                        version: v.version,
                    })
            })
            .collect())
    }

    /// The subjects with at least one (live, unless `include_deleted`) version, sorted.
    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        let state = self.lock();
        state
            .subjects
            .iter()
            .filter(|(_, r)| r.visible(include_deleted).next().is_some())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The subject's version numbers, ascending.
    pub fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<u32>> {
        let state = self.lock();
        let record = subject_record(&state, subject, include_deleted)?;
        Ok(record.visible(include_deleted).map(|v| v.version).collect())
    }

    /// One version of a subject.
    pub fn version(
        &self,
        subject: &str,
        version: VersionSpec,
        include_deleted: bool,
    ) -> Result<SubjectVersion> {
        let state = self.lock();
        let record = subject_record(&state, subject, include_deleted)?;
        let v = find_version(record, subject, version, include_deleted)?;
        Ok(subject_version(&state, subject, v))
    }

    /// The subject's newest live version.
    pub fn latest(&self, subject: &str) -> Result<SubjectVersion> {
        self.version(subject, VersionSpec::Latest, false)
    }

    /// Deletes a subject: soft (versions hidden, ids kept) or, after a soft delete, permanently.
    /// Returns the versions deleted.
    pub fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<u32>> {
        let mut state = self.lock();
        let mut record = match state.subjects.get(subject) {
            Some(r) if !r.versions.is_empty() => r.clone(),
            _ => return Err(RegistryError::SubjectNotFound(subject.to_owned())),
        };
        let deleted: Vec<u32>;
        let new_record = if permanent {
            if record.live().next().is_some() {
                return Err(RegistryError::SubjectNotSoftDeleted(subject.to_owned()));
            }
            deleted = record.versions.iter().map(|v| v.version).collect();
            None
        } else {
            if record.live().next().is_none() {
                return Err(RegistryError::SubjectSoftDeleted(subject.to_owned()));
            }
            deleted = record.live().map(|v| v.version).collect();
            for v in &mut record.versions {
                v.deleted = true;
            }
            Some(record)
        };
        let change = Change {
            subjects: vec![(subject.to_owned(), new_record)],
            ..Change::default()
        };
        self.commit(&mut state, change)?;
        tracing::debug!(subject, permanent, ?deleted, "deleted subject");
        Ok(deleted)
    }

    /// Deletes one version: soft, or permanently after a soft delete. Returns its number.
    pub fn delete_version(
        &self,
        subject: &str,
        version: VersionSpec,
        permanent: bool,
    ) -> Result<u32> {
        let mut state = self.lock();
        let mut record = match state.subjects.get(subject) {
            Some(r) if !r.versions.is_empty() => r.clone(),
            _ => return Err(RegistryError::SubjectNotFound(subject.to_owned())),
        };
        // A numbered version is found even when soft-deleted (to report 40406 or delete it for
        // good); `latest` means the newest live one, or the newest of all for a permanent delete.
        let include_deleted = permanent || matches!(version, VersionSpec::Number(_));
        let number = find_version(&record, subject, version, include_deleted)?.version;
        let index = record
            .versions
            .iter()
            .position(|v| v.version == number)
            .ok_or_else(|| RegistryError::VersionNotFound {
                subject: subject.to_owned(),
                version: number.to_string(),
            })?;
        if permanent {
            if !record.versions[index].deleted {
                return Err(RegistryError::VersionNotSoftDeleted {
                    subject: subject.to_owned(),
                    version: number,
                });
            }
            record.versions.remove(index);
        } else {
            if record.versions[index].deleted {
                return Err(RegistryError::VersionSoftDeleted {
                    subject: subject.to_owned(),
                    version: number,
                });
            }
            record.versions[index].deleted = true;
        }
        let new_record = (!record.versions.is_empty()).then_some(record);
        let change = Change {
            subjects: vec![(subject.to_owned(), new_record)],
            ..Change::default()
        };
        self.commit(&mut state, change)?;
        tracing::debug!(subject, version = number, permanent, "deleted version");
        Ok(number)
    }

    /// The global compatibility level.
    pub fn global_compatibility(&self) -> CompatibilityLevel {
        self.lock().global
    }

    /// Sets the global compatibility level.
    pub fn set_global_compatibility(&self, level: CompatibilityLevel) -> Result<()> {
        let mut state = self.lock();
        let change = Change {
            global: Some(level),
            ..Change::default()
        };
        self.commit(&mut state, change)
    }

    /// The subject's own compatibility level, if it has one.
    pub fn subject_compatibility(&self, subject: &str) -> Option<CompatibilityLevel> {
        self.lock()
            .subjects
            .get(subject)
            .and_then(|r| r.compatibility)
    }

    /// The level that applies to `subject`: its own, else the global one.
    pub fn effective_compatibility(&self, subject: &str) -> CompatibilityLevel {
        let state = self.lock();
        state
            .subjects
            .get(subject)
            .and_then(|r| r.compatibility)
            .unwrap_or(state.global)
    }

    /// Sets the subject's own compatibility level (the subject need not exist yet).
    pub fn set_subject_compatibility(
        &self,
        subject: &str,
        level: CompatibilityLevel,
    ) -> Result<()> {
        let mut state = self.lock();
        let mut record = state.subjects.get(subject).cloned().unwrap_or_default();
        record.compatibility = Some(level);
        let change = Change {
            subjects: vec![(subject.to_owned(), Some(record))],
            ..Change::default()
        };
        self.commit(&mut state, change)
    }

    /// Removes the subject's own level, returning it; the global level applies again.
    pub fn delete_subject_compatibility(&self, subject: &str) -> Result<CompatibilityLevel> {
        let mut state = self.lock();
        let mut record = state.subjects.get(subject).cloned().unwrap_or_default();
        let previous = record
            .compatibility
            .take()
            .ok_or_else(|| RegistryError::SubjectConfigNotFound(subject.to_owned()))?;
        let change = Change {
            subjects: vec![(subject.to_owned(), Some(record))],
            ..Change::default()
        };
        self.commit(&mut state, change)?;
        Ok(previous)
    }

    /// Tests `schema` against the subject without registering it.
    ///
    /// With `version`, checks against that one version in the direction(s) of the subject's
    /// level; without, checks as registration would. Returns the problems (empty = compatible).
    pub fn test_compatibility(
        &self,
        subject: &str,
        schema: &str,
        version: Option<VersionSpec>,
    ) -> Result<Vec<String>> {
        let (parsed, _, _) = normalize(schema)?;
        let state = self.lock();
        let level = state
            .subjects
            .get(subject)
            .and_then(|r| r.compatibility)
            .unwrap_or(state.global);
        match version {
            None => {
                let previous = state
                    .subjects
                    .get(subject)
                    .map(|r| live_schemas(&state, r))
                    .unwrap_or_default();
                Ok(compat::check(level, &parsed, &previous))
            }
            Some(spec) => {
                let record = subject_record(&state, subject, false)?;
                let v = find_version(record, subject, spec, false)?;
                let old = state
                    .parsed
                    .get(&v.id)
                    .cloned()
                    .ok_or(RegistryError::SchemaIdNotFound(v.id))?;
                Ok(compat::check(level, &parsed, &[old]))
            }
        }
    }
}

fn live_schemas(state: &State, record: &SubjectRecord) -> Vec<Schema> {
    record
        .live()
        .filter_map(|v| state.parsed.get(&v.id).cloned())
        .collect()
}

fn subject_record<'a>(
    state: &'a State,
    subject: &str,
    include_deleted: bool,
) -> Result<&'a SubjectRecord> {
    state
        .subjects
        .get(subject)
        .filter(|r| r.visible(include_deleted).next().is_some())
        .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))
}

fn find_version<'a>(
    record: &'a SubjectRecord,
    subject: &str,
    spec: VersionSpec,
    include_deleted: bool,
) -> Result<&'a VersionRecord> {
    let found = match spec {
        VersionSpec::Latest => record.visible(include_deleted).next_back(),
        VersionSpec::Number(n) => record.visible(include_deleted).find(|v| v.version == n),
    };
    found.ok_or_else(|| RegistryError::VersionNotFound {
        subject: subject.to_owned(),
        version: match spec {
            VersionSpec::Latest => "latest".to_owned(),
            VersionSpec::Number(n) => n.to_string(),
        },
    })
}

fn subject_version(state: &State, subject: &str, v: &VersionRecord) -> SubjectVersion {
    SubjectVersion {
        subject: subject.to_owned(),
        id: v.id,
        version: v.version,
        schema: state
            .schemas
            .get(&v.id)
            .map(|s| s.schema.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_keeps_order_and_strings() {
        let text = "{ \"type\" : \"record\",\n \"name\": \"P\", \"doc\": \"a \\\" b  c\", \"fields\": [] }";
        assert_eq!(
            compact_json(text),
            r#"{"type":"record","name":"P","doc":"a \" b  c","fields":[]}"#
        );
    }

    #[test]
    fn same_schema_modulo_whitespace_and_key_order_has_one_key() {
        let (_, a, _) =
            normalize(r#"{"type":"record","name":"P","fields":[{"name":"x","type":"int"}]}"#)
                .expect("valid schema");
        let (_, b, _) = normalize(
            "{\"fields\": [ {\"type\": \"int\", \"name\": \"x\"} ],\n \"name\": \"P\", \"type\": \"record\"}",
        )
        .expect("valid schema");
        assert_eq!(a, b);
        let (_, c, _) = normalize(
            r#"{"type":"record","name":"P","fields":[{"name":"x","type":"int","default":0}]}"#,
        )
        .expect("valid schema");
        assert_ne!(a, c, "a default value makes a different schema");
    }
}
