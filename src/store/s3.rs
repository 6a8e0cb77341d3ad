//! A bucket on an S3-compatible object store (AWS S3, MinIO, Ceph RGW,
//! Garage, Cloudflare R2, Backblaze B2), through aws-sdk-s3 on rustls/ring.
//!
//! - The tokio runtime lives here and nowhere else: the store owns a small
//!   runtime (two worker threads), and every trait method `block_on`s its
//!   requests, so the pipeline stays synchronous `Read`/`Write`.
//! - Every object is written as a multipart upload: it exists under its name
//!   only after CompleteMultipartUpload, and an upload that is dropped before
//!   `commit` is aborted. At most `parts_in_flight` parts are sent at once,
//!   while one more fills: memory is bounded by part size times one more
//!   than the parts in flight. Each part carries its Content-MD5 (the server
//!   checks it), is retried with exponential backoff, and its ETag is
//!   compared with the MD5 where the server's encryption keeps ETags MD5s;
//!   the completed object's size is checked against the bytes sent.
//! - An unfinished multipart upload of `X` is listed as `X.partial` (size 0,
//!   the time it was started), so the retention rules that clean stale
//!   partial files clean stale uploads too; deleting `X.partial` aborts them.
//! - Credentials come from a shared-credentials file (INI, mode 0600) named
//!   in the configuration, else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//!   (and `AWS_SESSION_TOKEN`), else the profile (`AWS_PROFILE`, default
//!   `default`) in `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`),
//!   checked like any secret file. Static keys only; they are never logged.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, EncodingType, ObjectLockEnabled, ObjectLockMode,
};
use aws_sdk_s3::Client;
use base64::Engine as _;
use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::{valid_file_name, Object, Store, Upload};
use crate::error::{Error, ExitCode, Result};

/// The smallest part S3 accepts (but for the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

#[derive(Debug, Clone)]
pub struct S3Config {
    pub name: String,
    /// `https://…` (plain `http://` only to a loopback address).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// A "directory" in the bucket: objects are `{prefix}/{file}`.
    pub prefix: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// A shared-credentials file (mode 0600); `None`: environment, then profile.
    pub credentials: Option<PathBuf>,
    /// The profile in the credentials file.
    pub profile: Option<String>,
    pub part_size: usize,
    pub parts_in_flight: usize,
    /// Attempts per part (and per request, by the SDK's own retries).
    pub retries: u32,
    pub timeout: Duration,
    /// Object Lock retention (COMPLIANCE mode) for every object written.
    pub object_lock_days: Option<u32>,
}

/// What went wrong talking to the bucket; each knows its exit code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum S3Error {
    /// No credentials, or a credentials file that cannot be used.
    #[error("credentials: {message}")]
    Credentials { message: String, missing: bool },
    #[error("bucket {bucket:?} at {endpoint}: the credentials were refused ({code}: {message})")]
    Refused {
        bucket: String,
        endpoint: String,
        code: String,
        message: String,
    },
    #[error("bucket {bucket:?} does not exist at {endpoint}")]
    NoSuchBucket { bucket: String, endpoint: String },
    #[error("{endpoint} unreachable: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("{op} {key}: {message}")]
    Request {
        op: &'static str,
        key: String,
        message: String,
        /// Worth another attempt (a server or network hiccup).
        transient: bool,
    },
    #[error("{key}: {message}")]
    Mismatch { key: String, message: String },
    #[error("object_lock_days: {message}")]
    ObjectLock { message: String },
}

impl S3Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            S3Error::Credentials { missing: true, .. } | S3Error::Refused { .. } => ExitCode::Key,
            S3Error::Credentials { missing: false, .. }
            | S3Error::NoSuchBucket { .. }
            | S3Error::ObjectLock { .. } => ExitCode::Usage,
            S3Error::Unreachable { .. } | S3Error::Request { .. } | S3Error::Mismatch { .. } => {
                ExitCode::Failed
            }
        }
    }

    pub fn hint(&self) -> Option<String> {
        Some(match self {
            S3Error::Credentials { .. } => "give `credentials = \"/etc/coffer/s3-credentials\"` (an AWS shared-credentials file, mode 0600) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            S3Error::Refused { .. } => "check the access key and secret (and the clock: signatures are refused when it is off by 15 minutes), and that the key may use this bucket".into(),
            S3Error::NoSuchBucket { .. } => "create the bucket, or correct `bucket` (and `endpoint`, `region`) in the configuration".into(),
            S3Error::ObjectLock { .. } => "create the bucket with Object Lock enabled on a server that supports it, or remove object_lock_days".into(),
            S3Error::Unreachable { .. } | S3Error::Request { .. } | S3Error::Mismatch { .. } => {
                return None
            }
        })
    }

    fn transient(&self) -> bool {
        matches!(
            self,
            S3Error::Unreachable { .. }
                | S3Error::Request {
                    transient: true,
                    ..
                }
        )
    }
}

/// The client and the runtime that drives it, made on first use.
struct Inner {
    rt: Runtime,
    client: Client,
}

pub struct S3Store {
    cfg: Arc<S3Config>,
    inner: OnceLock<std::result::Result<Arc<Inner>, S3Error>>,
    /// Set once the endpoint could not be reached after every retry: the
    /// rest of the run fails fast instead of waiting out the retries again.
    unreachable: Arc<Mutex<Option<S3Error>>>,
}

impl S3Store {
    pub fn new(cfg: S3Config) -> Self {
        S3Store {
            cfg: Arc::new(cfg),
            inner: OnceLock::new(),
            unreachable: Arc::new(Mutex::new(None)),
        }
    }

    fn fail(&self, e: S3Error) -> Error {
        if matches!(e, S3Error::Unreachable { .. }) {
            if let Ok(mut g) = self.unreachable.lock() {
                *g = Some(e.clone());
            }
        }
        Error::S3 {
            store: self.cfg.name.clone(),
            error: Box::new(e),
        }
    }

    fn inner(&self) -> Result<Arc<Inner>> {
        let known = self.unreachable.lock().ok().and_then(|g| g.clone());
        if let Some(e) = known {
            return Err(self.fail(e));
        }
        self.inner
            .get_or_init(|| connect(&self.cfg).map(Arc::new))
            .clone()
            .map_err(|e| self.fail(e))
    }

    fn key(&self, file: &str) -> Result<String> {
        if !valid_file_name(file) {
            return Err(Error::Usage(format!("invalid store file name {file:?}")));
        }
        Ok(object_key(&self.cfg.prefix, file))
    }

    /// The listing prefix: `prefix/`, or nothing.
    fn dir(&self) -> String {
        if self.cfg.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.cfg.prefix)
        }
    }

    fn classify<E>(&self, op: &'static str, key: &str, e: &SdkError<E, HttpResponse>) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        classify(&self.cfg, op, key, e)
    }

    /// Unfinished multipart uploads under the prefix: (key, upload id, started).
    fn multipart_uploads(&self, inner: &Inner, prefix: &str) -> Result<Vec<(String, String, i64)>> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        let mut pages = 0usize;
        loop {
            let r = inner.rt.block_on(
                inner
                    .client
                    .list_multipart_uploads()
                    .bucket(&self.cfg.bucket)
                    .prefix(prefix)
                    .encoding_type(EncodingType::Url)
                    .set_key_marker(key_marker.clone())
                    .set_upload_id_marker(id_marker.clone())
                    .send(),
            );
            let page = r.map_err(|e| self.fail(self.classify("list uploads", prefix, &e)))?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key().and_then(url_decoded), u.upload_id()) {
                    out.push((
                        k,
                        id.to_owned(),
                        u.initiated()
                            .map_or(0, aws_sdk_s3::primitives::DateTime::secs),
                    ));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            pages += 1;
            if out.len() > super::MAX_LISTED || pages > MAX_PAGES {
                return Err(self.fail(refused_listing(prefix, super::too_many_listed())));
            }
            let next = (
                page.next_key_marker().and_then(url_decoded),
                page.next_upload_id_marker().map(str::to_owned),
            );
            if next.0.is_none() && next.1.is_none() {
                break;
            }
            if !seen.insert(next.clone()) {
                return Err(self.fail(refused_listing(prefix, format!(
                    "the server repeats the upload listing's markers {next:?}; refusing the listing (a broken or hostile server)"
                ))));
            }
            (key_marker, id_marker) = next;
        }
        Ok(out)
    }
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// The most pages a listing may take: a thousand keys a page would reach
/// MAX_LISTED long before; a server that sends empty or tiny pages does not.
const MAX_PAGES: usize = 2_000;

/// A listing refused for its own shape (endless, or past the cap).
fn refused_listing(prefix: &str, message: String) -> S3Error {
    S3Error::Request {
        op: "list",
        key: prefix.to_owned(),
        message,
        transient: false,
    }
}

/// A key from a listing asked for with `encoding-type=url`. Listings ask
/// for it because S3 sends keys in XML, which cannot carry most control
/// characters: one key holding one (anyone who may put an object can make
/// it) would otherwise make the whole listing fail to parse, and with it
/// every run's retention in that store. `+` is a space, as S3 writes it.
fn url_decoded(key: &str) -> Option<String> {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// `{prefix}/{file}`, or `{file}` without a prefix.
pub fn object_key(prefix: &str, file: &str) -> String {
    if prefix.is_empty() {
        file.to_owned()
    } else {
        format!("{prefix}/{file}")
    }
}

fn classify<E>(
    cfg: &S3Config,
    op: &'static str,
    key: &str,
    e: &SdkError<E, HttpResponse>,
) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::DispatchFailure(d) => {
            let message = match d.as_connector_error() {
                Some(c) => root_cause(c),
                None => root_cause(e),
            };
            S3Error::Unreachable {
                endpoint: cfg.endpoint.clone(),
                message,
            }
        }
        SdkError::TimeoutError(_) => S3Error::Unreachable {
            endpoint: cfg.endpoint.clone(),
            message: format!("no answer within {}s", cfg.timeout.as_secs()),
        },
        _ => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let code = e.code().unwrap_or_default().to_owned();
            let message = one_line(e.message().unwrap_or_default());
            if code == "NoSuchBucket" {
                return S3Error::NoSuchBucket {
                    bucket: cfg.bucket.clone(),
                    endpoint: cfg.endpoint.clone(),
                };
            }
            let refused = [
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "InvalidToken",
                "ExpiredToken",
                "InvalidSecurity",
                "AuthorizationHeaderMalformed",
            ];
            if refused.contains(&code.as_str()) || status == Some(403) {
                return S3Error::Refused {
                    bucket: cfg.bucket.clone(),
                    endpoint: cfg.endpoint.clone(),
                    code: if code.is_empty() {
                        "HTTP 403".into()
                    } else {
                        code
                    },
                    message: format!("{op} {key}: {message}"),
                };
            }
            let transient = status.is_some_and(|s| s >= 500 || s == 429)
                || matches!(
                    code.as_str(),
                    "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
                );
            let said = match (code.is_empty(), message.is_empty()) {
                (false, false) => format!("{code}: {message}"),
                (false, true) => code,
                (true, _) => root_cause(e),
            };
            S3Error::Request {
                op,
                key: key.to_owned(),
                message: match status {
                    Some(s) => format!("{said} (HTTP {s})"),
                    None => said,
                },
                transient,
            }
        }
    }
}

/// The innermost cause of an error, on one line: "Connection refused (os
/// error 111)" rather than every layer's wrapping (and no Debug dumps).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether plain HTTP may be used to reach `host`: only on this machine.
pub fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => a.is_loopback(),
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
    }
}

/// Checks an endpoint: HTTPS, or HTTP to a loopback address.
pub fn check_endpoint(endpoint: &str) -> std::result::Result<(), String> {
    let url = url::Url::parse(endpoint).map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
    let host = url
        .host()
        .ok_or_else(|| format!("endpoint {endpoint:?} names no host"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&host) => Ok(()),
        "http" => Err(format!(
            "endpoint {endpoint:?}: plain http is allowed only to a loopback address; use https"
        )),
        s => Err(format!("endpoint {endpoint:?}: unsupported scheme {s:?}")),
    }
}

/// Static credentials: (access key id, secret, session token).
struct Keys {
    id: String,
    secret: zeroize::Zeroizing<String>,
    token: Option<zeroize::Zeroizing<String>>,
}

fn credentials(cfg: &S3Config) -> std::result::Result<Keys, S3Error> {
    let profile = cfg
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok())
        .unwrap_or_else(|| "default".into());
    if let Some(path) = &cfg.credentials {
        return credentials_file(path, &profile);
    }
    if let (Ok(id), Ok(secret)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok(Keys {
            id,
            secret: secret.into(),
            token: std::env::var("AWS_SESSION_TOKEN").ok().map(Into::into),
        });
    }
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".aws/credentials")));
    match path {
        Some(p) if p.exists() => credentials_file(&p, &profile),
        _ => Err(S3Error::Credentials {
            message: "none given: no `credentials` file in the store's configuration, no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, no ~/.aws/credentials".into(),
            missing: true,
        }),
    }
}

fn credentials_file(path: &Path, profile: &str) -> std::result::Result<Keys, S3Error> {
    let bad = |message: String| S3Error::Credentials {
        message: format!("{}: {message}", path.display()),
        missing: false,
    };
    // The same ownership and mode rules as every other secret file.
    let text = crate::fsutil::read_secret(path).map_err(|e| bad(crate::cli_chain(&e)))?;
    let values =
        parse_profile(&text, profile).ok_or_else(|| bad(format!("no [{profile}] profile")))?;
    let id = values
        .get("aws_access_key_id")
        .ok_or_else(|| bad(format!("[{profile}] has no aws_access_key_id")))?;
    let secret = values
        .get("aws_secret_access_key")
        .ok_or_else(|| bad(format!("[{profile}] has no aws_secret_access_key")))?;
    Ok(Keys {
        id: id.clone(),
        secret: secret.clone().into(),
        token: values.get("aws_session_token").map(|t| t.clone().into()),
    })
}

/// One profile's `key = value` lines of an INI credentials file.
fn parse_profile(text: &str, profile: &str) -> Option<BTreeMap<String, String>> {
    let mut current: Option<String> = None;
    let mut found = None::<BTreeMap<String, String>>;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            let section = section.strip_prefix("profile ").unwrap_or(section).trim();
            current = Some(section.to_owned());
            if section == profile {
                found.get_or_insert_with(BTreeMap::new);
            }
            continue;
        }
        if current.as_deref() != Some(profile) {
            continue;
        }
        if let (Some(map), Some((k, v))) = (found.as_mut(), line.split_once('=')) {
            map.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    found
}

fn connect(cfg: &S3Config) -> std::result::Result<Inner, S3Error> {
    let keys = credentials(cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("coffer-s3")
        .enable_all()
        .build()
        .map_err(|e| S3Error::Request {
            op: "start",
            key: String::new(),
            message: format!("cannot start the S3 runtime: {e}"),
            transient: false,
        })?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let creds = Credentials::new(
        keys.id,
        keys.secret.as_str(),
        keys.token.as_ref().map(|t| t.as_str().to_owned()),
        None,
        "coffer",
    );
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .endpoint_url(cfg.endpoint.clone())
        .force_path_style(cfg.path_style)
        .credentials_provider(creds)
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(cfg.retries.max(1)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
                .operation_attempt_timeout(cfg.timeout)
                .build(),
        )
        // Content-MD5 is sent and checked per part; the newer checksum
        // headers are not understood by every S3-compatible server.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Ok(Inner {
        rt,
        client: Client::from_conf(conf),
    })
}

/// The Object Lock request headers for an object written at `now`:
/// COMPLIANCE mode, retained until `now + days`.
pub fn lock_until(days: u32, now: i64) -> (ObjectLockMode, aws_sdk_s3::primitives::DateTime) {
    (
        ObjectLockMode::Compliance,
        aws_sdk_s3::primitives::DateTime::from_secs(now + i64::from(days) * 86_400),
    )
}

fn create_request(
    client: &Client,
    cfg: &S3Config,
    key: &str,
    now: i64,
) -> aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder {
    let mut req = client
        .create_multipart_upload()
        .bucket(&cfg.bucket)
        .key(key)
        .content_type("application/octet-stream");
    if let Some(days) = cfg.object_lock_days {
        let (mode, until) = lock_until(days, now);
        req = req
            .object_lock_mode(mode)
            .object_lock_retain_until_date(until);
    }
    req
}

/// A part's MD5: (hex, base64 for Content-MD5).
fn md5_of(data: &[u8]) -> (String, String) {
    let d = Md5::digest(data);
    (
        hex::encode(d),
        base64::engine::general_purpose::STANDARD.encode(d),
    )
}

/// Everything a part upload needs, shared with its task.
struct PartCtx {
    client: Client,
    cfg: Arc<S3Config>,
    key: String,
    upload_id: String,
}

async fn upload_part(
    ctx: Arc<PartCtx>,
    number: i32,
    data: Bytes,
) -> std::result::Result<CompletedPart, S3Error> {
    let (md5_hex, md5_b64) = md5_of(&data);
    let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
    let attempts = ctx.cfg.retries.max(1);
    let mut delay = Duration::from_millis(500);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = ctx
            .client
            .upload_part()
            .bucket(&ctx.cfg.bucket)
            .key(&ctx.key)
            .upload_id(&ctx.upload_id)
            .part_number(number)
            .content_length(len)
            .content_md5(&md5_b64)
            .body(ByteStream::from(data.clone()))
            .customize()
            // Retried here, with backoff, as a whole part.
            .config_override(aws_sdk_s3::Config::builder().retry_config(RetryConfig::disabled()))
            .send()
            .await;
        let err = match r {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().trim_matches('"').to_owned();
                // With SSE-KMS or SSE-C the ETag is not the MD5.
                let etag_is_md5 = out.sse_customer_algorithm().is_none()
                    && !matches!(
                        out.server_side_encryption(),
                        Some(
                            aws_sdk_s3::types::ServerSideEncryption::AwsKms
                                | aws_sdk_s3::types::ServerSideEncryption::AwsKmsDsse
                        )
                    );
                if etag.is_empty() {
                    S3Error::Mismatch {
                        key: ctx.key.clone(),
                        message: format!("part {number}: the server returned no ETag"),
                    }
                } else if etag_is_md5 && !etag.eq_ignore_ascii_case(&md5_hex) {
                    S3Error::Mismatch {
                        key: ctx.key.clone(),
                        message: format!(
                            "part {number}: the server's ETag {etag} is not the MD5 {md5_hex} of the {len} bytes sent"
                        ),
                    }
                } else {
                    return Ok(CompletedPart::builder()
                        .part_number(number)
                        .e_tag(out.e_tag().unwrap_or_default())
                        .build());
                }
            }
            Err(e) => classify(&ctx.cfg, "upload part of", &ctx.key, &e),
        };
        let retry = err.transient() || matches!(err, S3Error::Mismatch { .. });
        if !retry || attempt >= attempts || crate::cancel::is_cancelled() {
            return Err(err);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

struct S3Upload {
    store: String,
    inner: Arc<Inner>,
    ctx: Arc<PartCtx>,
    buf: Vec<u8>,
    in_flight: VecDeque<JoinHandle<std::result::Result<CompletedPart, S3Error>>>,
    done: Vec<CompletedPart>,
    next_part: i32,
    written: u64,
    /// The first part that failed: the upload is dead.
    failed: Option<S3Error>,
    finished: bool,
}

impl S3Upload {
    fn io_error(&self, e: S3Error) -> io::Error {
        io::Error::other(Error::S3 {
            store: self.store.clone(),
            error: Box::new(e),
        })
    }

    /// Waits for the oldest part in flight.
    fn wait_one(&mut self) -> std::result::Result<(), S3Error> {
        let Some(h) = self.in_flight.pop_front() else {
            return Ok(());
        };
        match self.inner.rt.block_on(h) {
            Ok(Ok(part)) => {
                self.done.push(part);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(S3Error::Request {
                op: "upload part of",
                key: self.ctx.key.clone(),
                message: format!("the part's task failed: {e}"),
                transient: false,
            }),
        }
    }

    /// Sends the buffer as the next part; returns once fewer than
    /// `parts_in_flight` parts are in flight, then starts a new buffer.
    fn send_part(&mut self) -> std::result::Result<(), S3Error> {
        let data = Bytes::from(std::mem::take(&mut self.buf));
        self.next_part += 1;
        let ctx = Arc::clone(&self.ctx);
        let number = self.next_part;
        self.in_flight
            .push_back(self.inner.rt.spawn(upload_part(ctx, number, data)));
        while self.in_flight.len() >= self.ctx.cfg.parts_in_flight.max(1) {
            self.wait_one()?;
        }
        self.buf = Vec::with_capacity(self.ctx.cfg.part_size);
        Ok(())
    }

    fn finish(&mut self) -> std::result::Result<(), S3Error> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        // The last part, which may be short (or empty, for an empty object).
        if !self.buf.is_empty() || self.next_part == 0 {
            let data = Bytes::from(std::mem::take(&mut self.buf));
            self.next_part += 1;
            let ctx = Arc::clone(&self.ctx);
            let number = self.next_part;
            self.in_flight
                .push_back(self.inner.rt.spawn(upload_part(ctx, number, data)));
        }
        while !self.in_flight.is_empty() {
            self.wait_one()?;
        }
        self.done.sort_by_key(CompletedPart::part_number);
        let ctx = &self.ctx;
        let parts = std::mem::take(&mut self.done);
        let r = self.inner.rt.block_on(
            ctx.client
                .complete_multipart_upload()
                .bucket(&ctx.cfg.bucket)
                .key(&ctx.key)
                .upload_id(&ctx.upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send(),
        );
        r.map_err(|e| classify(&ctx.cfg, "complete upload of", &ctx.key, &e))?;
        self.finished = true;
        // The object is there: check it holds what was sent.
        let head = self.inner.rt.block_on(
            ctx.client
                .head_object()
                .bucket(&ctx.cfg.bucket)
                .key(&ctx.key)
                .send(),
        );
        match head {
            Ok(h) if h.content_length() == i64::try_from(self.written).ok() => Ok(()),
            Ok(h) => {
                let _ = self.inner.rt.block_on(
                    ctx.client
                        .delete_object()
                        .bucket(&ctx.cfg.bucket)
                        .key(&ctx.key)
                        .send(),
                );
                Err(S3Error::Mismatch {
                    key: ctx.key.clone(),
                    message: format!(
                        "the server holds {:?} bytes, {} were sent",
                        h.content_length(),
                        self.written
                    ),
                })
            }
            // Write-only credentials may not read what they wrote: the
            // parts' MD5s were checked, and CompleteMultipartUpload succeeded.
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(403) => Ok(()),
            Err(e) => Err(classify(&ctx.cfg, "check", &ctx.key, &e)),
        }
    }
}

impl Write for S3Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(self.io_error(e.clone()));
        }
        if self.finished {
            return Err(io::Error::other("upload already finished"));
        }
        let room = self.ctx.cfg.part_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() >= self.ctx.cfg.part_size {
            if let Err(e) = self.send_part() {
                self.failed = Some(e.clone());
                return Err(self.io_error(e));
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload for S3Upload {
    fn commit(mut self: Box<Self>) -> Result<()> {
        self.finish().map_err(|e| Error::S3 {
            store: self.store.clone(),
            error: Box::new(e),
        })
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Not committed: stop the parts and abort, so that nothing of it
        // stays stored (or billed). If this fails, the next run cleans it.
        for h in self.in_flight.drain(..) {
            h.abort();
        }
        let ctx = &self.ctx;
        let _ = self.inner.rt.block_on(
            ctx.client
                .abort_multipart_upload()
                .bucket(&ctx.cfg.bucket)
                .key(&ctx.key)
                .upload_id(&ctx.upload_id)
                .send(),
        );
    }
}

struct S3Read {
    inner: Arc<Inner>,
    body: ByteStream,
    cur: Bytes,
    expected: Option<u64>,
    read: u64,
    key: String,
    pace: Pace,
}

/// The least a body must deliver in each window of `timeout_secs`: a server
/// that trickles a byte now and then (never idle long enough for a
/// timeout) would otherwise hold a restore for weeks. As curl's
/// `--speed-limit` with `--speed-time`.
const MIN_BYTES_PER_WINDOW: u64 = 64 << 10;

/// Counts only the time spent waiting on the server, not the reader's own:
/// a copy opened early and read later (a restore's fallback), or a reader
/// that pauses while it writes elsewhere, is not judged for that.
struct Pace {
    window: Duration,
    waited: Duration,
    bytes: u64,
}

impl Pace {
    fn new(window: Duration) -> Self {
        Pace {
            window,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// How long the next wait may take before the window is judged.
    fn left(&self) -> Duration {
        self.window.saturating_sub(self.waited)
    }

    /// Counts a wait of `took` that brought `n` bytes; once the waits fill
    /// a window, fails if they brought too few.
    fn got(&mut self, n: u64, took: Duration, key: &str) -> io::Result<()> {
        self.bytes += n;
        self.waited += took;
        if self.waited < self.window {
            return Ok(());
        }
        if self.bytes < MIN_BYTES_PER_WINDOW {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{key}: the server sent {} bytes in {}s, less than {} KiB; giving up on it",
                    self.bytes,
                    self.window.as_secs(),
                    MIN_BYTES_PER_WINDOW >> 10
                ),
            ));
        }
        self.waited = Duration::ZERO;
        self.bytes = 0;
        Ok(())
    }
}

impl Read for S3Read {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            let left = self.pace.left();
            let body = &mut self.body;
            let asked = std::time::Instant::now();
            // The timer is made inside the runtime, which drives it.
            let next = self
                .inner
                .rt
                .block_on(async { tokio::time::timeout(left, body.next()).await });
            let took = asked.elapsed();
            let Ok(next) = next else {
                // Nothing more within the window: judge it.
                self.pace.got(0, took, &self.key)?;
                continue;
            };
            match next {
                Some(Ok(b)) => {
                    self.pace.got(b.len() as u64, took, &self.key)?;
                    self.cur = b;
                }
                Some(Err(e)) => {
                    return Err(io::Error::other(format!(
                        "{}: {}",
                        self.key,
                        root_cause(&e)
                    )))
                }
                None => {
                    if let Some(n) = self.expected.filter(|&n| n != self.read) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{}: the server sent {} of {n} bytes", self.key, self.read),
                        ));
                    }
                    return Ok(0);
                }
            }
        }
        let n = self.cur.len().min(buf.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        self.read += n as u64;
        Ok(n)
    }
}

impl Store for S3Store {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn put(&self, file: &str) -> Result<Box<dyn Upload>> {
        let key = self.key(file)?;
        let inner = self.inner()?;
        if self.cfg.object_lock_days.is_some() {
            let r = inner.rt.block_on(
                inner
                    .client
                    .get_object_lock_configuration()
                    .bucket(&self.cfg.bucket)
                    .send(),
            );
            let enabled = match r {
                Ok(out) => out
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled),
                Err(e) => match self.classify("get object lock configuration of", &self.cfg.bucket, &e) {
                    S3Error::Request { message, .. } => {
                        return Err(self.fail(S3Error::ObjectLock {
                            message: format!(
                                "bucket {:?} at {}: no Object Lock configuration ({message}); the server may not support Object Lock",
                                self.cfg.bucket, self.cfg.endpoint
                            ),
                        }))
                    }
                    other => return Err(self.fail(other)),
                },
            };
            if !enabled {
                return Err(self.fail(S3Error::ObjectLock {
                    message: format!(
                        "bucket {:?} at {} does not have Object Lock enabled",
                        self.cfg.bucket, self.cfg.endpoint
                    ),
                }));
            }
        }
        let now = chrono::Utc::now().timestamp();
        let r = inner
            .rt
            .block_on(create_request(&inner.client, &self.cfg, &key, now).send());
        let out = r.map_err(|e| self.fail(self.classify("start upload of", &key, &e)))?;
        let upload_id = out.upload_id().unwrap_or_default().to_owned();
        if upload_id.is_empty() {
            return Err(self.fail(S3Error::Request {
                op: "start upload of",
                key,
                message: "the server returned no upload id".into(),
                transient: false,
            }));
        }
        Ok(Box::new(S3Upload {
            store: self.cfg.name.clone(),
            ctx: Arc::new(PartCtx {
                client: inner.client.clone(),
                cfg: Arc::clone(&self.cfg),
                key,
                upload_id,
            }),
            inner,
            buf: Vec::with_capacity(self.cfg.part_size),
            in_flight: VecDeque::new(),
            done: Vec::new(),
            next_part: 0,
            written: 0,
            failed: None,
            finished: false,
        }))
    }

    fn get(&self, file: &str) -> Result<Box<dyn Read + Send>> {
        let key = self.key(file)?;
        let inner = self.inner()?;
        let r = inner.rt.block_on(
            inner
                .client
                .get_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .send(),
        );
        let out = r.map_err(|e| self.fail(self.classify("get", &key, &e)))?;
        let expected = out.content_length().and_then(|n| u64::try_from(n).ok());
        Ok(Box::new(S3Read {
            inner,
            body: out.body,
            cur: Bytes::new(),
            expected,
            read: 0,
            key,
            pace: Pace::new(self.cfg.timeout),
        }))
    }

    fn list(&self) -> Result<Vec<Object>> {
        let inner = self.inner()?;
        let dir = self.dir();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        let mut pages = 0usize;
        loop {
            let r = inner.rt.block_on(
                inner
                    .client
                    .list_objects_v2()
                    .bucket(&self.cfg.bucket)
                    .prefix(&dir)
                    .delimiter("/")
                    .encoding_type(EncodingType::Url)
                    .set_continuation_token(token.clone())
                    .send(),
            );
            let page = r.map_err(|e| self.fail(self.classify("list", &dir, &e)))?;
            for o in page.contents() {
                let key = o.key().and_then(url_decoded);
                let Some(name) = key.as_deref().and_then(|k| k.strip_prefix(dir.as_str())) else {
                    continue;
                };
                if name.is_empty() || name.contains('/') {
                    continue;
                }
                out.push(Object {
                    name: name.to_owned(),
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    mtime: o
                        .last_modified()
                        .map_or(0, aws_sdk_s3::primitives::DateTime::secs),
                });
            }
            pages += 1;
            if out.len() > super::MAX_LISTED || pages > MAX_PAGES {
                return Err(self.fail(refused_listing(&dir, super::too_many_listed())));
            }
            let next = page.next_continuation_token().map(str::to_owned);
            if page.is_truncated() != Some(true) || next.is_none() {
                break;
            }
            // A token that comes back is a server paging in a circle.
            if !seen.insert(next.clone()) {
                return Err(self.fail(refused_listing(&dir, format!(
                    "the server repeats the listing's continuation token {next:?}; refusing the listing (a broken or hostile server)"
                ))));
            }
            token = next;
        }
        // Unfinished uploads, as `X.partial` (the newest start time of X's).
        let mut partial: BTreeMap<String, i64> = BTreeMap::new();
        for (key, _, started) in self.multipart_uploads(&inner, &dir)? {
            let Some(name) = key.strip_prefix(dir.as_str()) else {
                continue;
            };
            if name.is_empty() || name.contains('/') {
                continue;
            }
            let t = partial.entry(format!("{name}.partial")).or_insert(started);
            *t = (*t).max(started);
        }
        out.extend(partial.into_iter().map(|(name, mtime)| Object {
            name,
            size: 0,
            mtime,
        }));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&self, file: &str) -> Result<Option<Object>> {
        if let Some(target) = file.strip_suffix(".partial") {
            let key = self.key(target)?;
            let inner = self.inner()?;
            let started = self
                .multipart_uploads(&inner, &key)?
                .into_iter()
                .filter(|(k, _, _)| *k == key)
                .map(|(_, _, t)| t)
                .max();
            return Ok(started.map(|mtime| Object {
                name: file.to_owned(),
                size: 0,
                mtime,
            }));
        }
        let key = self.key(file)?;
        let inner = self.inner()?;
        let r = inner.rt.block_on(
            inner
                .client
                .head_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .send(),
        );
        match r {
            Ok(h) => Ok(Some(Object {
                name: file.to_owned(),
                size: h
                    .content_length()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
                mtime: h
                    .last_modified()
                    .map_or(0, aws_sdk_s3::primitives::DateTime::secs),
            })),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => Ok(None),
            Err(e) => Err(self.fail(self.classify("stat", &key, &e))),
        }
    }

    /// A part may be tried `retries` times, each within the timeout, with
    /// backoff between; and the commit waits for every part in flight, which
    /// a thin uplink takes a while to send (counted here at 64 KiB/s): past
    /// the longer of the two with no byte taken, the store is stuck.
    fn stall_after(&self) -> Duration {
        const THIN_UPLINK: u64 = 64 << 10;
        let held = (self.cfg.parts_in_flight as u64 + 1) * self.cfg.part_size as u64;
        // Capped: big parts on a thin uplink must not make a hung store
        // hold the night for hours.
        let sending = Duration::from_secs((held / THIN_UPLINK).min(1800));
        self.cfg
            .timeout
            .saturating_mul(self.cfg.retries.max(1) + 2)
            .max(sending)
            .max(Duration::from_secs(10))
    }

    fn delete(&self, file: &str) -> Result<()> {
        if let Some(target) = file.strip_suffix(".partial") {
            // Abort every unfinished upload of that object.
            let key = self.key(target)?;
            let inner = self.inner()?;
            for (k, id, _) in self.multipart_uploads(&inner, &key)? {
                if k != key {
                    continue;
                }
                let r = inner.rt.block_on(
                    inner
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.cfg.bucket)
                        .key(&key)
                        .upload_id(&id)
                        .send(),
                );
                match r {
                    Ok(_) => {}
                    Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => {}
                    Err(e) => return Err(self.fail(self.classify("abort upload of", &key, &e))),
                }
            }
            return Ok(());
        }
        let key = self.key(file)?;
        let inner = self.inner()?;
        let r = inner.rt.block_on(
            inner
                .client
                .delete_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .send(),
        );
        r.map(drop)
            .map_err(|e| self.fail(self.classify("delete", &key, &e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> S3Config {
        S3Config {
            name: "s3".into(),
            endpoint: "https://s3.example.com".into(),
            region: "us-east-1".into(),
            bucket: "b".into(),
            prefix: "backups/db".into(),
            path_style: false,
            credentials: None,
            profile: None,
            part_size: MIN_PART_SIZE,
            parts_in_flight: 2,
            retries: 3,
            timeout: Duration::from_secs(30),
            object_lock_days: Some(30),
        }
    }

    #[test]
    fn endpoints_need_https_but_on_loopback() {
        assert!(check_endpoint("https://s3.example.com").is_ok());
        assert!(check_endpoint("http://127.0.0.1:3900").is_ok());
        assert!(check_endpoint("http://[::1]:3900").is_ok());
        assert!(check_endpoint("http://localhost:3900").is_ok());
        let e = check_endpoint("http://s3.example.com").unwrap_err();
        assert!(e.contains("use https"), "{e}");
        assert!(check_endpoint("http://10.0.0.1:3900").is_err());
        assert!(check_endpoint("ftp://127.0.0.1").is_err());
        assert!(check_endpoint("s3.example.com").is_err());
    }

    #[test]
    fn credentials_profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = S\n\n[profile other]\naws_access_key_id=B\naws_secret_access_key=T\naws_session_token = X\n";
        let d = parse_profile(text, "default").unwrap();
        assert_eq!(d["aws_access_key_id"], "A");
        assert_eq!(d["aws_secret_access_key"], "S");
        let o = parse_profile(text, "other").unwrap();
        assert_eq!(o["aws_access_key_id"], "B");
        assert_eq!(o["aws_session_token"], "X");
        assert!(parse_profile(text, "missing").is_none());
    }

    #[test]
    fn keys_are_under_the_prefix() {
        assert_eq!(object_key("backups/db", "j.coffer"), "backups/db/j.coffer");
        assert_eq!(object_key("", "j.coffer"), "j.coffer");
    }

    /// The request an Object Lock store makes (Garage, for one, has no
    /// Object Lock, so this is checked here rather than against a server).
    #[test]
    fn object_lock_request() {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .build();
        let client = Client::from_conf(conf);
        let c = cfg();
        let now = 1_800_000_000;
        let req = create_request(&client, &c, "backups/db/j.coffer", now);
        assert_eq!(
            req.get_object_lock_mode(),
            &Some(ObjectLockMode::Compliance)
        );
        assert_eq!(
            req.get_object_lock_retain_until_date()
                .as_ref()
                .map(aws_sdk_s3::primitives::DateTime::secs),
            Some(now + 30 * 86_400)
        );
        assert_eq!(req.get_key().as_deref(), Some("backups/db/j.coffer"));
        let mut plain = c.clone();
        plain.object_lock_days = None;
        let req = create_request(&client, &plain, "k", now);
        assert_eq!(req.get_object_lock_mode(), &None);
        assert_eq!(req.get_object_lock_retain_until_date(), &None);
    }

    #[test]
    fn exit_codes() {
        let refused = S3Error::Refused {
            bucket: "b".into(),
            endpoint: "e".into(),
            code: "InvalidAccessKeyId".into(),
            message: String::new(),
        };
        assert_eq!(refused.exit_code(), ExitCode::Key);
        let missing = S3Error::NoSuchBucket {
            bucket: "b".into(),
            endpoint: "e".into(),
        };
        assert_eq!(missing.exit_code(), ExitCode::Usage);
        let down = S3Error::Unreachable {
            endpoint: "e".into(),
            message: "refused".into(),
        };
        assert_eq!(down.exit_code(), ExitCode::Failed);
    }
}
