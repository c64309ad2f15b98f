//! [`FetchConfig`]: the limits and the SSRF allowlist of an [`ImageFetcher`](super::ImageFetcher),
//! as read from a configuration file, with its [`validate`](FetchConfig::validate) step.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::guard::{AddressGuard, AllowEntry};

/// Limits of one image fetch and the addresses that bypass the SSRF guard.
///
/// Durations deserialize from integer milliseconds or from strings such as `"250ms"`, `"5s"`,
/// `"1m"`. Every field has a default, so `{}` is a valid configuration.
///
/// # Example
///
/// ```
/// use images::FetchConfig;
///
/// let config: FetchConfig = serde_json::from_str(
///     r#"{"connect_timeout": "2s", "max_bytes": 1048576, "allowlist": ["10.1.0.0/16", "images.internal"]}"#,
/// ).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.total_timeout, std::time::Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Time allowed to establish the TCP (and TLS) connection of one hop. Default 5 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub connect_timeout: Duration,
    /// Time allowed for the whole fetch: every redirect hop plus reading the body. Default 30 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub total_timeout: Duration,
    /// Largest accepted body in bytes. Default 10 MiB.
    pub max_bytes: u64,
    /// Largest number of redirects followed. Default 5.
    pub max_redirects: u32,
    /// CIDRs (`10.0.0.0/8`, `::1/128`), single addresses or host names (`images.internal`, or
    /// `*.internal` for every sub-domain) that bypass the SSRF guard. Default empty.
    pub allowlist: Vec<String>,
    /// Allow loopback addresses (127.0.0.0/8, ::1). Off by default; the standalone mode turns it
    /// on so that images served by the same machine can be collected.
    pub allow_loopback: bool,
    /// `User-Agent` header sent with every request.
    pub user_agent: String,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(30),
            max_bytes: 10 * 1024 * 1024,
            max_redirects: 5,
            allowlist: Vec::new(),
            allow_loopback: false,
            user_agent: concat!("catalog-stream-images/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// A problem found in a [`FetchConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchConfigError {
    /// A timeout of zero.
    #[error("fetch config: `{field}` must be greater than zero")]
    ZeroTimeout {
        /// The offending field.
        field: &'static str,
    },
    /// `connect_timeout` exceeds `total_timeout`.
    #[error(
        "fetch config: `connect_timeout` ({connect:?}) must not exceed `total_timeout` ({total:?})"
    )]
    ConnectExceedsTotal {
        /// The connect timeout.
        connect: Duration,
        /// The total timeout.
        total: Duration,
    },
    /// `max_bytes` is zero.
    #[error("fetch config: `max_bytes` must be greater than zero")]
    ZeroMaxBytes,
    /// An allowlist entry is neither an address, a CIDR nor a host name.
    #[error("fetch config: allowlist[{index}] = {entry:?}: {reason}")]
    BadAllowlistEntry {
        /// Position in the list.
        index: usize,
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `user_agent` is not a valid header value.
    #[error("fetch config: `user_agent` is not a valid header value")]
    BadUserAgent,
    /// Every problem [`FetchConfig::validate`] found, when building a fetcher.
    #[error("invalid fetch config: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The problems.
        errors: Vec<FetchConfigError>,
    },
    /// The HTTP client could not be built.
    #[error("fetch config: cannot build the HTTP client: {reason}")]
    Client {
        /// Why.
        reason: String,
    },
}

impl FetchConfig {
    /// Checks every field and returns all problems found, not only the first.
    pub fn validate(&self) -> Result<(), Vec<FetchConfigError>> {
        let mut errors = Vec::new();
        if self.connect_timeout.is_zero() {
            errors.push(FetchConfigError::ZeroTimeout {
                field: "connect_timeout",
            });
        }
        if self.total_timeout.is_zero() {
            errors.push(FetchConfigError::ZeroTimeout {
                field: "total_timeout",
            });
        }
        if self.connect_timeout > self.total_timeout {
            errors.push(FetchConfigError::ConnectExceedsTotal {
                connect: self.connect_timeout,
                total: self.total_timeout,
            });
        }
        if self.max_bytes == 0 {
            errors.push(FetchConfigError::ZeroMaxBytes);
        }
        if reqwest::header::HeaderValue::from_str(&self.user_agent).is_err() {
            errors.push(FetchConfigError::BadUserAgent);
        }
        if let Err(mut bad) = self.parse_allowlist() {
            errors.append(&mut bad);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The SSRF guard this configuration describes.
    pub fn guard(&self) -> Result<AddressGuard, Vec<FetchConfigError>> {
        Ok(AddressGuard::new(
            self.parse_allowlist()?,
            self.allow_loopback,
        ))
    }

    fn parse_allowlist(&self) -> Result<Vec<AllowEntry>, Vec<FetchConfigError>> {
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        for (index, entry) in self.allowlist.iter().enumerate() {
            match AllowEntry::parse(entry) {
                Ok(parsed) => entries.push(parsed),
                Err(reason) => errors.push(FetchConfigError::BadAllowlistEntry {
                    index,
                    entry: entry.clone(),
                    reason,
                }),
            }
        }
        if errors.is_empty() {
            Ok(entries)
        } else {
            Err(errors)
        }
    }
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"` or a bare number of milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. \"500ms\" or \"5s\""))?;
    match unit.trim() {
        "" | "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(value.saturating_mul(3600))),
        other => Err(format!(
            "invalid duration unit {other:?} in {text:?}: use ms, s, m or h"
        )),
    }
}

pub(crate) fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
        Raw::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let config: FetchConfig = serde_json::from_str("{}").expect("empty config");
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
        assert_eq!(config.total_timeout, Duration::from_secs(30));
        assert_eq!(config.max_bytes, 10 * 1024 * 1024);
        assert_eq!(config.max_redirects, 5);
        assert!(config.allowlist.is_empty());
        assert!(!config.allow_loopback);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn durations_parse_from_numbers_and_strings() {
        let config: FetchConfig =
            serde_json::from_str(r#"{"connect_timeout": 250, "total_timeout": "2m"}"#)
                .expect("durations");
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
        assert_eq!(config.total_timeout, Duration::from_secs(120));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(serde_json::from_str::<FetchConfig>(r#"{"total_timeout": "x"}"#).is_err());
    }

    #[test]
    fn validate_reports_every_problem() {
        let config = FetchConfig {
            connect_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(1),
            max_bytes: 0,
            allowlist: vec![
                "10.0.0.0/33".into(),
                "ok.example".into(),
                "bad host!".into(),
            ],
            ..FetchConfig::default()
        };
        let errors = config.validate().expect_err("invalid");
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| matches!(e, FetchConfigError::BadAllowlistEntry { index: 2, .. }))
        );
    }
}
