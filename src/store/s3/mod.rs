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

mod client;
mod error;
mod listing;
mod lock;
mod read;
mod upload;

pub use client::check_endpoint;
pub use error::S3Error;

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::runtime::Runtime;

use super::{valid_file_name, Object, Store, Upload};
use crate::store::{Result, StoreError as Error};
use client::connect;
use error::{classify, HttpResponse};
use read::{Pace, S3Read};

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
    notes: crate::store::Notes,
}

impl S3Store {
    pub fn new(cfg: S3Config) -> Self {
        S3Store {
            notes: crate::store::Notes::default(),
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
}

/// `{prefix}/{file}`, or `{file}` without a prefix.
pub fn object_key(prefix: &str, file: &str) -> String {
    if prefix.is_empty() {
        file.to_owned()
    } else {
        format!("{prefix}/{file}")
    }
}

impl Store for S3Store {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn put(&self, file: &str) -> Result<Box<dyn Upload>> {
        let key = self.key(file)?;
        let inner = self.inner()?;
        self.check_bucket_lock(&inner)?;
        self.start_upload(key, inner)
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
        self.list_objects()
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

    fn notes(&self) -> Vec<String> {
        self.notes.all()
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
    use super::client::parse_profile;
    use super::upload::create_request;
    use super::*;
    use crate::exit::ExitCode;
    use aws_sdk_s3::config::{BehaviorVersion, Region};
    use aws_sdk_s3::types::ObjectLockMode;

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
