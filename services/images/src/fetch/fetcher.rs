//! [`ImageFetcher`]: one guarded HTTP(S) fetch of an image, redirects followed by hand so that
//! every hop is checked, the body streamed under a size cap and recognised by its magic number.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};

use super::config::{FetchConfig, FetchConfigError};
use super::error::FetchError;
use super::guard::{AddressGuard, Blocked, GuardedResolver};
use super::sniff::{ImageFormat, SNIFF_LEN, sniff};

/// An image fetched and recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedImage {
    /// The whole body.
    pub bytes: Bytes,
    /// The format recognised from the bytes.
    pub format: ImageFormat,
    /// The MIME type of [`format`](Self::format) (what the bytes are, not what the server said).
    pub content_type: &'static str,
    /// Lower-case hex SHA-256 of [`bytes`](Self::bytes).
    pub sha256: String,
    /// File extension for storage keys, without the dot.
    pub extension: &'static str,
    /// The URL the image was finally read from, after redirects.
    pub final_url: String,
    /// How many redirects were followed.
    pub redirects: u32,
}

/// Fetches product images under the limits of a [`FetchConfig`].
///
/// Cheap to clone (the HTTP client is shared); build one and reuse it.
///
/// # Example
///
/// ```no_run
/// use images::{FetchConfig, ImageFetcher};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let fetcher = ImageFetcher::new(FetchConfig::default())?;
/// match fetcher.fetch("https://shop.example/p/1.png").await {
///     Ok(image) => println!("{} bytes of {}", image.bytes.len(), image.content_type),
///     Err(err) if err.is_transient() => println!("try again later: {err}"),
///     Err(err) => println!("failed for good ({}): {err}", err.code()),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ImageFetcher {
    client: reqwest::Client,
    config: Arc<FetchConfig>,
    guard: Arc<AddressGuard>,
}

impl FetchConfig {
    /// Validates the configuration and builds the fetcher it describes.
    pub fn build(&self) -> Result<ImageFetcher, FetchConfigError> {
        ImageFetcher::new(self.clone())
    }
}

impl ImageFetcher {
    /// Validates `config` and builds a fetcher: a `reqwest` client with the guarded resolver, no
    /// proxy (a proxy would connect on our behalf, around the guard), no automatic redirects and
    /// the configured connect timeout.
    pub fn new(config: FetchConfig) -> Result<Self, FetchConfigError> {
        config
            .validate()
            .map_err(|errors| FetchConfigError::Invalid { errors })?;
        let guard = Arc::new(
            config
                .guard()
                .map_err(|errors| FetchConfigError::Invalid { errors })?,
        );
        crate::install_tls_provider();
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver::new(guard.clone())))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .user_agent(config.user_agent.as_str())
            .build()
            .map_err(|e| FetchConfigError::Client {
                reason: e.to_string(),
            })?;
        Ok(Self {
            client,
            config: Arc::new(config),
            guard,
        })
    }

    /// The configuration this fetcher enforces.
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Fetches one image: at most `total_timeout` for the whole operation, redirects included.
    pub async fn fetch(&self, url: &str) -> Result<FetchedImage, FetchError> {
        let total = self.config.total_timeout;
        match tokio::time::timeout(total, self.fetch_unbounded(url)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout { after: total }),
        }
    }

    async fn fetch_unbounded(&self, url: &str) -> Result<FetchedImage, FetchError> {
        let mut current = Url::parse(url).map_err(|e| FetchError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        self.check_url(&current)?;
        let mut seen = HashSet::from([current.clone()]);
        let mut redirects = 0u32;
        loop {
            let response = self
                .client
                .get(current.clone())
                .header(ACCEPT, "image/avif,image/webp,image/*;q=0.9")
                .send()
                .await
                .map_err(|e| self.classify(e))?;
            let status = response.status();
            if is_redirect(status) {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| FetchError::InvalidUrl {
                        url: current.to_string(),
                        reason: format!("HTTP {} redirect without a usable Location", status),
                    })?;
                let next = current.join(location).map_err(|e| FetchError::InvalidUrl {
                    url: location.to_owned(),
                    reason: format!("redirect target: {e}"),
                })?;
                redirects += 1;
                if redirects > self.config.max_redirects || !seen.insert(next.clone()) {
                    return Err(FetchError::TooManyRedirects {
                        max: self.config.max_redirects,
                    });
                }
                // Checked before anything is sent to the new host.
                self.check_url(&next)?;
                tracing::debug!(from = %current, to = %next, "following redirect");
                current = next;
                continue;
            }
            if !status.is_success() {
                return Err(match status {
                    StatusCode::NOT_FOUND | StatusCode::GONE => FetchError::NotFound {
                        status: status.as_u16(),
                    },
                    _ => FetchError::HttpStatus {
                        status: status.as_u16(),
                    },
                });
            }
            return self.read_image(response, current, redirects).await;
        }
    }

    /// Scheme and literal-address checks for a URL about to be requested.
    fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(FetchError::UnsupportedScheme {
                    scheme: other.to_owned(),
                });
            }
        }
        let host = url.host().ok_or_else(|| FetchError::InvalidUrl {
            url: url.to_string(),
            reason: "no host".to_owned(),
        })?;
        self.guard
            .check_literal_host(&host)
            .map_err(|blocked| blocked_error(&blocked))
    }

    async fn read_image(
        &self,
        mut response: reqwest::Response,
        url: Url,
        redirects: u32,
    ) -> Result<FetchedImage, FetchError> {
        let limit = self.config.max_bytes;
        let declared_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let essence = declared_type
            .as_deref()
            .and_then(|t| t.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase());
        let not_an_image = |detail: &str| FetchError::NotAnImage {
            content_type: declared_type.clone(),
            detail: detail.to_owned(),
        };
        match essence.as_deref() {
            Some("image/svg+xml") => return Err(not_an_image("SVG images are refused")),
            Some(t) if t.starts_with("image/") => {}
            Some(_) => return Err(not_an_image("content type is not image/*")),
            None => return Err(not_an_image("no Content-Type header")),
        }
        if let Some(length) = response.content_length()
            && length > limit
        {
            return Err(FetchError::TooLarge {
                limit,
                declared: Some(length),
            });
        }
        let limit_len = usize::try_from(limit).unwrap_or(usize::MAX);
        let initial = response.content_length().unwrap_or(64 * 1024).min(limit);
        let mut body: Vec<u8> = Vec::with_capacity(usize::try_from(initial).unwrap_or(64 * 1024));
        let mut format = None;
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(e))? {
            // Never hold more than the cap plus the chunk in hand.
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(FetchError::TooLarge {
                    limit,
                    declared: None,
                });
            }
            // Grow by doubling, but never past the cap (a plain Vec could double beyond it).
            let needed = body.len() + chunk.len();
            if needed > body.capacity() {
                let target = needed.max(body.len().saturating_mul(2)).min(limit_len);
                body.reserve_exact(target - body.len());
            }
            body.extend_from_slice(&chunk);
            if format.is_none() && body.len() >= SNIFF_LEN {
                format = Some(
                    sniff(&body)
                        .ok_or_else(|| not_an_image("the bytes are not a known image format"))?,
                );
            }
        }
        let format = match format {
            Some(format) => format,
            None if body.is_empty() => return Err(not_an_image("empty body")),
            None => sniff(&body)
                .ok_or_else(|| not_an_image("the bytes are not a known image format"))?,
        };
        if essence.as_deref() != Some(format.mime()) {
            tracing::debug!(declared = ?essence, actual = format.mime(), %url, "content type differs from the bytes");
        }
        let bytes = Bytes::from(body);
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(FetchedImage {
            bytes,
            format,
            content_type: format.mime(),
            sha256,
            extension: format.extension(),
            final_url: url.to_string(),
            redirects,
        })
    }

    /// Maps a `reqwest` error to a [`FetchError`], finding a guard refusal in its source chain.
    fn classify(&self, err: reqwest::Error) -> FetchError {
        let mut detail = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            if let Some(blocked) = cause.downcast_ref::<Blocked>() {
                return blocked_error(blocked);
            }
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        if err.is_timeout() {
            let after: Duration = if err.is_connect() {
                self.config.connect_timeout
            } else {
                self.config.total_timeout
            };
            return FetchError::Timeout { after };
        }
        FetchError::Connection {
            detail,
            source: Some(err),
        }
    }
}

fn blocked_error(blocked: &Blocked) -> FetchError {
    FetchError::BlockedAddress {
        host: blocked.host.clone(),
        detail: blocked.to_string(),
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}
