//! [`S3ObjectStore`]: objects in an S3 bucket through `aws-sdk-s3`, path-style addressing so that
//! MinIO, moto and other S3-compatible servers work as well as AWS.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde::Deserialize;

use super::{ObjectData, ObjectStore, StoreError, StoredObject, validate_key};

/// Where and how to reach the bucket.
///
/// Fields left out fall back to the environment: `AWS_REGION` (then `us-east-1`; the region is
/// never looked up from instance metadata), `AWS_ENDPOINT_URL` / `S3_ENDPOINT`, and the SDK's
/// default credential chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profile, web identity…).
///
/// # Example
///
/// ```
/// use images::S3Config;
///
/// let config: S3Config = serde_json::from_str(
///     r#"{"bucket": "product-images", "endpoint": "http://127.0.0.1:5055", "create_bucket": true}"#,
/// ).unwrap();
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The region; default from `AWS_REGION`/`AWS_DEFAULT_REGION`, then `us-east-1`.
    pub region: Option<String>,
    /// A custom endpoint (MinIO, moto); default from `AWS_ENDPOINT_URL`/`S3_ENDPOINT`, then AWS.
    pub endpoint: Option<String>,
    /// Static credentials; when absent the SDK's default chain is used.
    pub access_key_id: Option<String>,
    /// Secret of `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Optional session token of the static credentials.
    pub session_token: Option<String>,
    /// Create the bucket at start-up when it does not exist.
    pub create_bucket: bool,
    /// Public base URL of the bucket (a CDN or a public bucket); the HTTP location of a key is
    /// `{public_base_url}/{key}`.
    pub public_base_url: Option<String>,
    /// When no public base URL is set, hand out presigned GET URLs valid this long (seconds).
    pub presign_expiry_secs: Option<u64>,
}

impl S3Config {
    /// Checks the bucket name, the credentials pair, the URLs and the presign expiry, reporting
    /// every problem.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let b = &self.bucket;
        if b.len() < 3
            || b.len() > 63
            || !b
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
            || b.starts_with(['-', '.'])
            || b.ends_with(['-', '.'])
        {
            errors.push(format!(
                "bucket {b:?}: 3 to 63 lower-case letters, digits, '-' or '.'"
            ));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            errors.push("access_key_id and secret_access_key must be given together".to_owned());
        }
        for (field, url) in [
            ("endpoint", &self.endpoint),
            ("public_base_url", &self.public_base_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                errors.push(format!("{field} {url:?} must be an http(s) URL"));
            }
        }
        if let Some(secs) = self.presign_expiry_secs
            && !(1..=7 * 24 * 3600).contains(&secs)
        {
            errors.push("presign_expiry_secs must be between 1 and 604800 (7 days)".to_owned());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// An [`ObjectStore`] on one S3 bucket. URIs are `s3://bucket/key`.
///
/// # Example
///
/// ```no_run
/// use images::{ObjectStore, S3Config, S3ObjectStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = S3ObjectStore::new(S3Config {
///     bucket: "product-images".into(),
///     endpoint: Some("http://127.0.0.1:5055".into()),
///     create_bucket: true,
///     ..S3Config::default()
/// })
/// .await?;
/// let stored = store.put("products/m/p/x.png", "…".into(), "image/png").await?;
/// assert_eq!(stored.uri, "s3://product-images/products/m/p/x.png");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: Client,
    bucket: String,
    region: String,
    public_base_url: Option<String>,
    presign_expiry: Option<Duration>,
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

impl S3ObjectStore {
    /// Validates `config`, builds the client (path-style), and creates the bucket when
    /// `create_bucket` is set and it is missing.
    pub async fn new(config: S3Config) -> Result<Self, StoreError> {
        config
            .validate()
            .map_err(|errors| StoreError::Config(errors.join("; ")))?;
        let region = config
            .region
            .clone()
            .or_else(|| env_first(&["AWS_REGION", "AWS_DEFAULT_REGION"]))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| env_first(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT"]));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .http_client(crate::s3_https_client());
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                config.session_token.clone(),
                None,
                "images-s3-config",
            ));
        }
        if let Some(endpoint) = &endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            // S3-compatible servers do not all speak the newer default checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        let store = Self {
            client: Client::from_conf(s3_config),
            bucket: config.bucket.clone(),
            region,
            public_base_url: config
                .public_base_url
                .as_deref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            presign_expiry: config.presign_expiry_secs.map(Duration::from_secs),
        };
        if config.create_bucket {
            store.ensure_bucket().await?;
        }
        Ok(store)
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The underlying SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn s3_error<E>(&self, op: &'static str, key: &str, err: E) -> StoreError
    where
        E: std::error::Error + 'static,
    {
        StoreError::S3 {
            op,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            detail: DisplayErrorContext(&err).to_string(),
        }
    }

    fn checked<'k>(&self, key: &'k str) -> Result<&'k str, StoreError> {
        validate_key(key).map_err(|reason| StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        })?;
        Ok(key)
    }

    /// Creates the bucket unless it already exists.
    pub async fn ensure_bucket(&self) -> Result<(), StoreError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => {}
            Err(err) => return Err(self.s3_error("HeadBucket", "", err)),
        }
        let mut request = self.client.create_bucket().bucket(&self.bucket);
        if self.region != "us-east-1" {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "created bucket");
                Ok(())
            }
            Err(err)
                if err.as_service_error().is_some_and(|e| {
                    e.is_bucket_already_owned_by_you() || e.code() == Some("BucketAlreadyExists")
                }) =>
            {
                Ok(())
            }
            Err(err) => Err(self.s3_error("CreateBucket", "", err)),
        }
    }

    async fn put_object(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<StoredObject, StoreError> {
        let key = self.checked(key)?;
        let size = bytes.len() as u64;
        let output = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(i64::try_from(size).unwrap_or(i64::MAX))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.s3_error("PutObject", key, e))?;
        Ok(StoredObject {
            uri: self.uri(key),
            key: key.to_owned(),
            size,
            etag: output.e_tag().map(|t| t.trim_matches('"').to_owned()),
            content_type: content_type.to_owned(),
            url: self.location(key).await?,
        })
    }

    async fn get_object(&self, key: &str) -> Result<Option<ObjectData>, StoreError> {
        let key = self.checked(key)?;
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Ok(None);
            }
            Err(err) => return Err(self.s3_error("GetObject", key, err)),
        };
        let content_type = output
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_owned();
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| self.s3_error("GetObject", key, e))?
            .into_bytes();
        Ok(Some(ObjectData {
            bytes,
            content_type,
        }))
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        let key = self.checked(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.s3_error("DeleteObject", key, e))?;
        Ok(())
    }

    async fn head_object(&self, key: &str) -> Result<bool, StoreError> {
        let key = self.checked(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(err) => Err(self.s3_error("HeadObject", key, err)),
        }
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let output = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.s3_error("ListObjectsV2", prefix, e))?;
            keys.extend(
                output
                    .contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match output.next_continuation_token() {
                Some(next) if output.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// The HTTP location of `key`: `{public_base_url}/{key}`, else a presigned GET URL when
    /// `presign_expiry_secs` is set, else `None`.
    async fn location(&self, key: &str) -> Result<Option<String>, StoreError> {
        if let Some(base) = &self.public_base_url {
            return Ok(Some(format!("{base}/{key}")));
        }
        let Some(expiry) = self.presign_expiry else {
            return Ok(None);
        };
        let presigning = PresigningConfig::expires_in(expiry)
            .map_err(|e| StoreError::Config(format!("presign expiry: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(presigning)
            .await
            .map_err(|e| self.s3_error("PresignGetObject", key, e))?;
        Ok(Some(request.uri().to_owned()))
    }
}

impl ObjectStore for S3ObjectStore {
    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
        content_type: &'a str,
    ) -> BoxFuture<'a, Result<StoredObject, StoreError>> {
        Box::pin(self.put_object(key, bytes, content_type))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectData>, StoreError>> {
        Box::pin(self.get_object(key))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.delete_object(key))
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.head_object(key))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(self.list_objects(prefix))
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn http_url<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let key = self.checked(key)?;
            self.location(key).await
        })
    }
}
