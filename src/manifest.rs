//! The manifests: the plain sidecar `{name}.coffer.json` beside each sealed
//! file (readable without a key, written last: a `.coffer` without it is an
//! incomplete upload), and the inner `MANIFEST.json`, the archive's last
//! member, which lists every member with its size and SHA-256.

use serde::{Deserialize, Serialize};

pub const SIDECAR_FORMAT: &str = "coffer-sidecar/1";
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
        if s.format != SIDECAR_FORMAT {
            return Err(format!("unknown sidecar format {:?}", s.format));
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
