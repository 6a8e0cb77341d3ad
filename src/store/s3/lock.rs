//! S3 Object Lock: the retention each object is written with, and the
//! check that the bucket can hold it.

use aws_sdk_s3::types::{ObjectLockEnabled, ObjectLockMode};

use crate::store::Result;

use super::{Inner, S3Error, S3Store};

/// The Object Lock request headers for an object written at `now`:
/// COMPLIANCE mode, retained until `now + days`.
pub fn lock_until(days: u32, now: i64) -> (ObjectLockMode, aws_sdk_s3::primitives::DateTime) {
    (
        ObjectLockMode::Compliance,
        aws_sdk_s3::primitives::DateTime::from_secs(now + i64::from(days) * 86_400),
    )
}

impl S3Store {
    /// With `object_lock_days`, the bucket must have Object Lock enabled.
    pub(super) fn check_bucket_lock(&self, inner: &Inner) -> Result<()> {
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
        Ok(())
    }
}
