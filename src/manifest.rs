//! The manifests: the plain sidecar `{name}.coffer.json` beside each sealed
//! file (readable without a key, written last: a `.coffer` without it is an
//! incomplete upload), and the inner `MANIFEST.json`, the archive's last
//! member, which lists every member with its size and SHA-256.

use serde::{Deserialize, Serialize};

/// Sidecars written now: v1 plus the ledger fields `seq` and `prev`.
pub const SIDECAR_FORMAT: &str = "coffer-sidecar/2";
/// Sidecars of earlier versions, still read (they have no ledger fields).
pub const SIDECAR_FORMAT_V1: &str = "coffer-sidecar/1";
pub const INNER_FORMAT: &str = "coffer-manifest/1";
pub const INNER_NAME: &str = "MANIFEST.json";
pub const SEALED_SUFFIX: &str = ".coffer";
pub const SIDECAR_SUFFIX: &str = ".coffer.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    pub format: String,
    pub name: String,
    pub job: String,
    /// RFC 3339 UTC.
    pub created: String,
    /// Size of the `.coffer` file in bytes.
    pub size: u64,
    /// SHA-256 of the `.coffer` file, hex.
    pub sha256: String,
    pub format_version: u16,
    pub compression: String,
    /// `kind SHA256:hex` of each recipient.
    pub recipients: Vec<String>,
    pub tool_version: String,
    pub sources: Vec<String>,
    pub duration_ms: u64,
    /// The job's ledger: this backup's sequence number (1 for the first)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// …and the SHA-256 (hex) of the exact bytes of the job's previous
    /// sidecar, empty for the first. Signed with the rest of the sidecar, so
    /// a server can hide, replay or reorder backups only visibly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

impl Sidecar {
    pub fn file_name(&self) -> String {
        format!("{}{SIDECAR_SUFFIX}", self.name)
    }

    pub fn sealed_name(&self) -> String {
        format!("{}{SEALED_SUFFIX}", self.name)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let s: Sidecar = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match s.format.as_str() {
            SIDECAR_FORMAT => {
                if s.seq.is_none() || s.prev.is_none() {
                    return Err("a coffer-sidecar/2 needs seq and prev".into());
                }
            }
            SIDECAR_FORMAT_V1 => {
                if s.seq.is_some() || s.prev.is_some() {
                    return Err("a coffer-sidecar/1 has no seq or prev".into());
                }
            }
            other => return Err(format!("unknown sidecar format {other:?}")),
        }
        if s.prev.as_deref().is_some_and(|p| {
            !(p.is_empty() || (p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit())))
        }) {
            return Err("prev is not a SHA-256".into());
        }
        if !is_sha256_hex(&s.sha256) {
            return Err("sha256 is not a SHA-256".into());
        }
        chrono::DateTime::parse_from_rfc3339(&s.created)
            .map_err(|e| format!("bad created time {:?}: {e}", s.created))?;
        Ok(s)
    }

    pub fn created(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.created)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A backup name exactly as a run of `job` makes it:
/// `{job}-YYYYMMDDTHHMMSSZ`, optionally `-N` for a second run in one second.
/// Retention and `latest` believe no other name, whatever its sidecar says.
pub fn is_backup_name(job: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(job).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let (stamp, suffix) = rest.split_at(rest.len().min(16));
    let b = stamp.as_bytes();
    let stamp_ok = b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && chrono::NaiveDateTime::parse_from_str(&stamp[..15], "%Y%m%dT%H%M%S").is_ok();
    let suffix_ok = suffix.is_empty()
        || suffix.strip_prefix('-').is_some_and(|n| {
            !n.is_empty()
                && n.len() <= 3
                && !n.starts_with('0')
                && n.bytes().all(|c| c.is_ascii_digit())
        });
    stamp_ok && suffix_ok
}

/// One source's part of the inner manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub commands: Vec<Vec<String>>,
    pub tool_versions: Vec<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub row_counts: std::collections::BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberEntry {
    pub path: String,
    pub kind: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inner {
    pub format: String,
    pub name: String,
    pub job: String,
    pub created: String,
    pub tool_version: String,
    pub host: String,
    pub sources: Vec<SourceEntry>,
    pub members: Vec<MemberEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_are_exact() {
        assert!(is_backup_name("prod", "prod-20261123T000100Z"));
        assert!(is_backup_name("prod", "prod-20261123T000100Z-2"));
        assert!(is_backup_name("prod-db", "prod-db-20261123T000100Z"));
        // Another job's backup never counts as this job's.
        assert!(!is_backup_name("prod", "prod-db-20261123T000100Z"));
        assert!(!is_backup_name("prod", "prod-20261123T000100Z-02"));
        assert!(!is_backup_name("prod", "prod-20261323T000100Z"));
        assert!(!is_backup_name("prod", "prod-20261123T000100Zx"));
        assert!(!is_backup_name("prod", "prod-20261123T000100Z-"));
        assert!(!is_backup_name("prod", "prod-99991123T000100"));
        assert!(!is_backup_name("prod", "prod"));
        assert!(!is_backup_name("prod", ""));
    }

    fn sidecar(format: &str, seq: Option<u64>, prev: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&Sidecar {
            format: format.into(),
            name: "j-20261123T000100Z".into(),
            job: "j".into(),
            created: "2026-11-23T00:01:00.000Z".into(),
            size: 1,
            sha256: "ab".repeat(32),
            format_version: 1,
            compression: "zstd".into(),
            recipients: vec![],
            tool_version: "0".into(),
            sources: vec![],
            duration_ms: 0,
            seq,
            prev: prev.map(Into::into),
        })
        .unwrap()
    }

    #[test]
    fn ledger_fields_belong_to_v2_only() {
        assert!(Sidecar::parse(&sidecar(SIDECAR_FORMAT, Some(1), Some(""))).is_ok());
        assert!(Sidecar::parse(&sidecar(SIDECAR_FORMAT_V1, None, None)).is_ok());
        assert!(Sidecar::parse(&sidecar(SIDECAR_FORMAT, None, None)).is_err());
        assert!(Sidecar::parse(&sidecar(SIDECAR_FORMAT_V1, Some(1), Some(""))).is_err());
        assert!(Sidecar::parse(&sidecar(SIDECAR_FORMAT, Some(2), Some("xyz"))).is_err());
    }
}
