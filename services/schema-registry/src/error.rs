//! The registry's errors, each carrying the Confluent `error_code` and HTTP status a client expects.

/// Everything that can go wrong in the registry, worded as Confluent's registry words it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The subject has no (live) versions.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// The subject exists but not this version.
    #[error("Version {version} not found.")]
    VersionNotFound {
        /// The subject that was asked for.
        subject: String,
        /// The version, as the client wrote it.
        version: String,
    },
    /// No schema with this id.
    #[error("Schema {0} not found")]
    SchemaIdNotFound(u32),
    /// The schema is not registered under the subject.
    #[error("Schema not found")]
    SchemaNotFound,
    /// Soft-deleting a subject that is already soft-deleted.
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// Permanently deleting a subject that still has live versions.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// Soft-deleting a version that is already soft-deleted.
    #[error(
        "Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// Permanently deleting a version that is still live.
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// `GET /config/{subject}` for a subject without its own level.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    /// The schema text is not a valid Avro schema (or is missing).
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// A `schemaType` other than AVRO.
    #[error(
        "Unsupported schema type '{0}': this registry supports only AVRO (PROTOBUF and JSON are not implemented)"
    )]
    UnsupportedSchemaType(String),
    /// Schema references were sent.
    #[error("Invalid schema: schema references are not supported by this registry")]
    ReferencesUnsupported,
    /// A version that is neither a positive number, `-1` nor `latest`.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// A compatibility level this registry does not know.
    #[error(
        "Invalid compatibility level '{0}'. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel(String),
    /// The schema breaks the subject's compatibility rule.
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
        details.join("; ")
    )]
    Incompatible {
        /// The subject.
        subject: String,
        /// One line per violated rule.
        details: Vec<String>,
    },
    /// The request body is not the JSON the route expects.
    #[error("Malformed request: {0}")]
    MalformedRequest(String),
    /// The sled store failed.
    #[error("Error in the backend data store: {0}")]
    Storage(#[from] sled::Error),
    /// A stored record could not be read back.
    #[error("Error in the backend data store: corrupt record '{key}': {reason}")]
    Corrupt {
        /// The sled key.
        key: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl RegistryError {
    /// Confluent's `error_code` for this error.
    pub fn error_code(&self) -> u32 {
        match self {
            Self::SubjectNotFound(_) => 40401,
            Self::VersionNotFound { .. } => 40402,
            Self::SchemaIdNotFound(_) | Self::SchemaNotFound => 40403,
            Self::SubjectSoftDeleted(_) => 40404,
            Self::SubjectNotSoftDeleted(_) => 40405,
            Self::VersionSoftDeleted { .. } => 40406,
            Self::VersionNotSoftDeleted { .. } => 40407,
            Self::SubjectConfigNotFound(_) => 40408,
            Self::InvalidSchema(_)
            | Self::UnsupportedSchemaType(_)
            | Self::ReferencesUnsupported => 42201,
            Self::InvalidVersion(_) => 42202,
            Self::InvalidCompatibilityLevel(_) => 42203,
            Self::Incompatible { .. } => 409,
            Self::MalformedRequest(_) => 400,
            Self::Storage(_) | Self::Corrupt { .. } => 50001,
        }
    }

    /// The HTTP status that goes with [`RegistryError::error_code`].
    pub fn http_status(&self) -> u16 {
        match self.error_code() {
            409 => 409,
            400 => 400,
            code => u16::try_from(code / 100).unwrap_or(500),
        }
    }
}

/// Result alias for the registry.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
