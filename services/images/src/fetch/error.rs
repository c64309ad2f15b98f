//! [`FetchError`]: why an image could not be fetched, whether trying again may help, and a short
//! machine-readable reason code for statuses and metrics.

use std::time::Duration;

/// Why fetching an image failed.
///
/// [`is_transient`](Self::is_transient) separates failures worth retrying (5xx, 429, timeouts,
/// connection problems) from permanent ones; [`code`](Self::code) is a stable snake_case reason.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL could not be parsed, has no host, or a redirect's `Location` is unusable.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Only `http` and `https` are fetched (`file:`, `ftp:`, `data:`, … are refused).
    #[error("unsupported URL scheme {scheme:?}: only http and https are fetched")]
    UnsupportedScheme {
        /// The scheme found.
        scheme: String,
    },
    /// The host is, or resolves only to, an address the SSRF guard refuses. Nothing was sent.
    #[error("blocked address: {detail}")]
    BlockedAddress {
        /// The host that was refused.
        host: String,
        /// The refused addresses and why.
        detail: String,
    },
    /// More redirects than allowed, or a redirect loop.
    #[error("too many redirects (more than {max})")]
    TooManyRedirects {
        /// The configured maximum.
        max: u32,
    },
    /// 404 Not Found or 410 Gone.
    #[error("not found (HTTP {status})")]
    NotFound {
        /// The status code.
        status: u16,
    },
    /// Any other unsuccessful status; transient for 5xx, 408 and 429.
    #[error("HTTP status {status}")]
    HttpStatus {
        /// The status code.
        status: u16,
    },
    /// The body is larger than the configured maximum.
    #[error("too large: {} exceeds the limit of {limit} bytes", match declared {
        Some(n) => format!("declared Content-Length {n}"),
        None => "body".to_owned(),
    })]
    TooLarge {
        /// The configured maximum in bytes.
        limit: u64,
        /// The `Content-Length` the server announced, when that was enough to refuse.
        declared: Option<u64>,
    },
    /// The response is not a recognised image: wrong or missing `image/*` content type, SVG, or
    /// bytes whose magic number is not an image format.
    #[error("not an image ({}): {detail}", content_type.as_deref().unwrap_or("no content type"))]
    NotAnImage {
        /// The `Content-Type` the server sent.
        content_type: Option<String>,
        /// What gave it away.
        detail: String,
    },
    /// The connect or total timeout expired.
    #[error("timed out after {after:?}")]
    Timeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// Connecting failed, or the connection broke while reading.
    #[error("connection failed: {detail}")]
    Connection {
        /// What happened.
        detail: String,
        /// The underlying error.
        #[source]
        source: Option<reqwest::Error>,
    },
}

impl FetchError {
    /// Whether retrying later may succeed: 5xx, 408, 429, timeouts and connection failures.
    ///
    /// # Example
    ///
    /// ```
    /// use images::FetchError;
    ///
    /// assert!(FetchError::HttpStatus { status: 503 }.is_transient());
    /// assert!(!FetchError::NotFound { status: 404 }.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Self::HttpStatus { status } => *status >= 500 || *status == 408 || *status == 429,
            Self::Timeout { .. } | Self::Connection { .. } => true,
            Self::InvalidUrl { .. }
            | Self::UnsupportedScheme { .. }
            | Self::BlockedAddress { .. }
            | Self::TooManyRedirects { .. }
            | Self::NotFound { .. }
            | Self::TooLarge { .. }
            | Self::NotAnImage { .. } => false,
        }
    }

    /// A short, stable, machine-readable reason: `not_found`, `not_an_image`, `too_large`,
    /// `blocked_address`, `timeout`, `http_status`, `too_many_redirects`, `unsupported_scheme`,
    /// `connection` or `invalid_url`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } => "invalid_url",
            Self::UnsupportedScheme { .. } => "unsupported_scheme",
            Self::BlockedAddress { .. } => "blocked_address",
            Self::TooManyRedirects { .. } => "too_many_redirects",
            Self::NotFound { .. } => "not_found",
            Self::HttpStatus { .. } => "http_status",
            Self::TooLarge { .. } => "too_large",
            Self::NotAnImage { .. } => "not_an_image",
            Self::Timeout { .. } => "timeout",
            Self::Connection { .. } => "connection",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_codes() {
        let too_large = FetchError::TooLarge {
            limit: 10,
            declared: Some(20),
        };
        assert_eq!(
            too_large.to_string(),
            "too large: declared Content-Length 20 exceeds the limit of 10 bytes"
        );
        assert_eq!(too_large.code(), "too_large");
        assert!(!too_large.is_transient());
        assert!(FetchError::HttpStatus { status: 429 }.is_transient());
        assert!(!FetchError::HttpStatus { status: 403 }.is_transient());
        let timeout = FetchError::Timeout {
            after: Duration::from_secs(1),
        };
        assert!(timeout.is_transient());
        assert_eq!(timeout.code(), "timeout");
    }
}
