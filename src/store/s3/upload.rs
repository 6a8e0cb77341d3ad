//! Uploads as multipart uploads: parts sent while the next fills, each
//! with its Content-MD5 and retries; aborted when dropped before commit.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ObjectLockMode};
use aws_sdk_s3::Client;
use base64::Engine as _;
use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::task::JoinHandle;

use super::error::classify;
use super::lock::lock_until;
use super::{Inner, S3Config, S3Error, S3Store};
use crate::store::{Result, StoreError as Error, Upload};

pub(super) fn create_request(
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
pub(super) fn md5_of(data: &[u8]) -> (String, String) {
    let d = Md5::digest(data);
    (
        hex::encode(d),
        base64::engine::general_purpose::STANDARD.encode(d),
    )
}

/// Everything a part upload needs, shared with its task.
pub(super) struct PartCtx {
    pub(super) client: Client,
    pub(super) cfg: Arc<S3Config>,
    pub(super) key: String,
    pub(super) upload_id: String,
    /// The Object Lock the object was asked for, to check it holds it.
    pub(super) lock: Option<(ObjectLockMode, DateTime)>,
}

pub(super) async fn upload_part(
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

pub(super) struct S3Upload {
    pub(super) store: String,
    pub(super) inner: Arc<Inner>,
    pub(super) ctx: Arc<PartCtx>,
    pub(super) buf: Vec<u8>,
    pub(super) in_flight: VecDeque<JoinHandle<std::result::Result<CompletedPart, S3Error>>>,
    pub(super) done: Vec<CompletedPart>,
    pub(super) next_part: i32,
    pub(super) written: u64,
    /// The first part that failed: the upload is dead.
    pub(super) failed: Option<S3Error>,
    pub(super) finished: bool,
}

impl S3Upload {
    pub(super) fn io_error(&self, e: S3Error) -> io::Error {
        io::Error::other(Error::S3 {
            store: self.store.clone(),
            error: Box::new(e),
        })
    }

    /// Waits for the oldest part in flight.
    pub(super) fn wait_one(&mut self) -> std::result::Result<(), S3Error> {
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
    pub(super) fn send_part(&mut self) -> std::result::Result<(), S3Error> {
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

    pub(super) fn finish(&mut self) -> std::result::Result<(), S3Error> {
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
        // A reply the SDK cannot read though the server answered 200 (moto
        // 5.2 names its root element wrongly) may well mean the object was
        // made: the HEAD below decides, and a missing object keeps the
        // upload unfinished, so that it is aborted.
        let unread = match &r {
            Ok(_) => None,
            Err(e) if e.raw_response().is_some_and(|r| r.status().is_success()) => Some(format!(
                "the server's reply to completing the upload of {} is not an S3 reply ({})",
                ctx.key,
                super::error::root_cause(e)
            )),
            Err(e) => return Err(classify(&ctx.cfg, "complete upload of", &ctx.key, e)),
        };
        // The object should be there: check it holds what was sent.
        let head = self.inner.rt.block_on(
            ctx.client
                .head_object()
                .bucket(&ctx.cfg.bucket)
                .key(&ctx.key)
                .send(),
        );
        if let (Some(message), Err(_)) = (&unread, &head) {
            return Err(S3Error::Request {
                op: "complete upload of",
                key: ctx.key.clone(),
                message: format!("{message}, and the object cannot be found"),
                transient: false,
            });
        }
        self.finished = true;
        match head {
            Ok(h) if h.content_length() == i64::try_from(self.written).ok() => {
                match not_locked_as_asked(ctx.lock.as_ref(), &h) {
                    None => Ok(()),
                    Some(message) => {
                        // Counted nowhere and protected by nothing: removed,
                        // so that the run's failure leaves nothing behind.
                        self.delete_object();
                        Err(S3Error::ObjectLock {
                            message: format!("{}: {message}", ctx.key),
                        })
                    }
                }
            }
            Ok(h) => {
                self.delete_object();
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

impl S3Upload {
    fn delete_object(&self) {
        let ctx = &self.ctx;
        let _ = self.inner.rt.block_on(
            ctx.client
                .delete_object()
                .bucket(&ctx.cfg.bucket)
                .key(&ctx.key)
                .send(),
        );
    }
}

/// Why an object does not hold the Object Lock it was asked for (a server
/// that ignores the lock headers on multipart uploads), if it does not:
/// the mode asked, and a retain-until date no earlier than asked.
fn not_locked_as_asked(
    asked: Option<&(ObjectLockMode, DateTime)>,
    head: &aws_sdk_s3::operation::head_object::HeadObjectOutput,
) -> Option<String> {
    let (mode, until) = asked?;
    let held_mode = head.object_lock_mode();
    let held_until = head.object_lock_retain_until_date();
    if held_mode == Some(mode) && held_until.is_some_and(|u| u.secs() >= until.secs()) {
        return None;
    }
    Some(format!(
        "the server stored it without the lock asked for ({} until {}): it holds {} until {}; \
         this server does not keep Object Lock on multipart uploads",
        mode.as_str(),
        until,
        held_mode.map_or("no lock mode", ObjectLockMode::as_str),
        held_until.map_or_else(|| "no date".to_owned(), ToString::to_string),
    ))
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

impl S3Store {
    pub(super) fn start_upload(&self, key: String, inner: Arc<Inner>) -> Result<Box<dyn Upload>> {
        let now = chrono::Utc::now().timestamp();
        let lock = self.cfg.object_lock_days.map(|days| lock_until(days, now));
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
                lock,
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
}
