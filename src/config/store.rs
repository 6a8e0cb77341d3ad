//! The `[[store]]` tables: where backups are kept, and what each kind of
//! store needs.

use std::path::PathBuf;

use serde::Deserialize;

use super::yes;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Store {
    Local {
        name: Option<String>,
        path: PathBuf,
        /// Apply retention here (false when another machine prunes).
        #[serde(default = "yes")]
        prune: bool,
    },
    Sftp {
        name: Option<String>,
        host: String,
        #[serde(default = "ssh_port")]
        port: u16,
        user: String,
        /// The dedicated private key (mode 0600), or `"agent"` for ssh-agent.
        identity: String,
        /// Required: the server's pinned host key(s).
        known_hosts: PathBuf,
        /// The directory on the server (relative to the login or chroot).
        path: String,
        #[serde(default = "yes")]
        prune: bool,
        #[serde(default = "default_timeout")]
        timeout_secs: u64,
        /// Connection attempts, with exponential backoff, before giving up.
        #[serde(default = "default_retries")]
        retries: u32,
    },
    /// A bucket on an S3-compatible object store.
    S3 {
        name: Option<String>,
        /// `https://…`; plain `http://` only to a loopback address.
        /// Default: AWS's endpoint for the region.
        endpoint: Option<String>,
        #[serde(default = "default_region")]
        region: String,
        bucket: String,
        /// Objects go to `{prefix}/{file}` (no leading or trailing `/`).
        #[serde(default)]
        prefix: String,
        /// Path-style URLs (`endpoint/bucket/key`): MinIO, Garage, Ceph.
        #[serde(default)]
        path_style: bool,
        /// An AWS shared-credentials file (INI), mode 0600. Without it: the
        /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment, then the
        /// profile in ~/.aws/credentials.
        credentials: Option<PathBuf>,
        /// The profile in the credentials file (default `default`, or AWS_PROFILE).
        profile: Option<String>,
        #[serde(default = "yes")]
        prune: bool,
        /// Multipart upload part size, MiB (5–1024).
        #[serde(default = "default_part_size_mib")]
        part_size_mib: u32,
        /// Parts uploaded at once (1–32); memory ≈ part size × (this + 1).
        #[serde(default = "default_parts_in_flight")]
        parts_in_flight: u32,
        /// S3 Object Lock (COMPLIANCE) retention, in days, for every object.
        object_lock_days: Option<u32>,
        #[serde(default = "default_timeout")]
        timeout_secs: u64,
        /// Attempts per request and per part, with exponential backoff.
        #[serde(default = "default_retries")]
        retries: u32,
    },
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_part_size_mib() -> u32 {
    8
}

fn default_parts_in_flight() -> u32 {
    4
}

fn ssh_port() -> u16 {
    22
}

fn default_timeout() -> u64 {
    30
}

fn default_retries() -> u32 {
    3
}

impl Store {
    pub fn name(&self) -> String {
        match self {
            Store::Local { name, path, .. } => name
                .clone()
                .unwrap_or_else(|| format!("local:{}", path.display())),
            Store::Sftp {
                name,
                host,
                port,
                user,
                path,
                ..
            } => name
                .clone()
                .unwrap_or_else(|| format!("sftp://{user}@{host}:{port}/{path}")),
            Store::S3 {
                name,
                bucket,
                prefix,
                ..
            } => name.clone().unwrap_or_else(|| {
                if prefix.is_empty() {
                    format!("s3://{bucket}")
                } else {
                    format!("s3://{bucket}/{prefix}")
                }
            }),
        }
    }

    pub fn prune(&self) -> bool {
        match self {
            Store::Local { prune, .. } | Store::Sftp { prune, .. } | Store::S3 { prune, .. } => {
                *prune
            }
        }
    }

    /// What can be checked of an S3 store without the network.
    pub(super) fn check_s3(&self) -> Result<(), String> {
        let Store::S3 {
            endpoint,
            bucket,
            prefix,
            part_size_mib,
            parts_in_flight,
            object_lock_days,
            ..
        } = self
        else {
            return Ok(());
        };
        let n = self.name();
        if let Some(e) = endpoint {
            crate::store::check_endpoint(e).map_err(|m| format!("store {n:?}: {m}"))?;
        }
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !bucket_ok {
            return Err(format!(
                "store {n:?}: bucket {bucket:?} must be 3-63 lowercase letters, digits, '-' or '.'"
            ));
        }
        let prefix_ok = prefix.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
        if !prefix.is_empty() && !prefix_ok {
            return Err(format!(
                "store {n:?}: prefix {prefix:?} must be '/'-separated names of letters, digits, '-', '_' or '.', without a leading or trailing '/'"
            ));
        }
        if !(5..=1024).contains(part_size_mib) {
            return Err(format!(
                "store {n:?}: part_size_mib must be 5 to 1024 (S3's smallest part is 5 MiB)"
            ));
        }
        if !(1..=32).contains(parts_in_flight) {
            return Err(format!("store {n:?}: parts_in_flight must be 1 to 32"));
        }
        if *object_lock_days == Some(0) {
            return Err(format!(
                "store {n:?}: object_lock_days must be at least 1 (or left out)"
            ));
        }
        Ok(())
    }
}
