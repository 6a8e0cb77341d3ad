//! Listing a bucket's prefix: paged, capped, keys URL-encoded, unfinished
//! multipart uploads shown as `.partial` files.

use std::collections::BTreeMap;

use aws_sdk_s3::types::EncodingType;

use super::{Inner, S3Error, S3Store};
use crate::store::{too_many_listed, MAX_LISTED};
use crate::store::{Object, Result};

/// The most pages a listing may take: a thousand keys a page would reach
/// MAX_LISTED long before; a server that sends empty or tiny pages does not.
pub(super) const MAX_PAGES: usize = 2_000;

/// A listing refused for its own shape (endless, or past the cap).
pub(super) fn refused_listing(prefix: &str, message: String) -> S3Error {
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
pub(super) fn url_decoded(key: &str) -> Option<String> {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

impl S3Store {
    /// Unfinished multipart uploads under the prefix: (key, upload id, started).
    pub(super) fn multipart_uploads(
        &self,
        inner: &Inner,
        prefix: &str,
    ) -> Result<Vec<(String, String, i64)>> {
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
            let page = match r {
                Ok(page) => page,
                // An optional call (s3rver answers 501): without it nothing
                // unfinished can be seen, so there is nothing to clean.
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 501) => {
                    self.notes.say(
                        "the server cannot list unfinished multipart uploads (HTTP 501): an \
                         interrupted upload there is not cleaned by coffer; let a lifecycle rule \
                         (AbortIncompleteMultipartUpload) or the server's own cleanup remove them",
                    );
                    return Ok(Vec::new());
                }
                Err(e) => return Err(self.fail(self.classify("list uploads", prefix, &e))),
            };
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
            if out.len() > MAX_LISTED || pages > MAX_PAGES {
                return Err(self.fail(refused_listing(prefix, too_many_listed())));
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

    pub(super) fn list_objects(&self) -> Result<Vec<Object>> {
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
            if out.len() > MAX_LISTED || pages > MAX_PAGES {
                return Err(self.fail(refused_listing(&dir, too_many_listed())));
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
}
