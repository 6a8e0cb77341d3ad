//! The manifests: the plain sidecar `{name}.coffer.json` beside each sealed
//! file (readable without a key, written last: a `.coffer` without it is an
//! incomplete upload), and the inner `MANIFEST.json`, the archive's last
//! member, which lists every member with its size and SHA-256.

use serde::{Deserialize, Serialize};

/// Sidecars written now: v2 plus `blake3`, the sealed file's BLAKE3, which
/// coffer checks in place of its SHA-256 (kept for `sha256sum`).
pub const SIDECAR_FORMAT: &str = "coffer-sidecar/3";
/// Sidecars of earlier versions, still read: v2 has the ledger fields `seq`
/// and `prev` and no `blake3`; v1 has neither.
pub const SIDECAR_FORMAT_V2: &str = "coffer-sidecar/2";
pub const SIDECAR_FORMAT_V1: &str = "coffer-sidecar/1";
pub const INNER_FORMAT: &str = "coffer-manifest/1";
/// An inner manifest whose earlier members are listed in member lists
/// (`MANIFEST.d/NNNNNN.json`) written through the archive, so that neither
/// side ever holds a whole large tree's list in memory.
pub const INNER_FORMAT_V2: &str = "coffer-manifest/2";
pub const INNER_NAME: &str = "MANIFEST.json";
/// The format of one member list.
pub const LIST_FORMAT: &str = "coffer-members/1";
/// Where member lists go in the archive.
pub const LIST_DIR: &str = "MANIFEST.d/";
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
    /// SHA-256 of the `.coffer` file, hex: for `sha256sum -c`, and what
    /// coffer checks in sidecars without `blake3`.
    pub sha256: String,
    /// BLAKE3 of the `.coffer` file, hex (v3): what coffer checks, four to
    /// twenty times faster than SHA-256 depending on the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
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
        let (ledger, blake3) = match s.format.as_str() {
            SIDECAR_FORMAT => (true, true),
            SIDECAR_FORMAT_V2 => (true, false),
            SIDECAR_FORMAT_V1 => (false, false),
            other => return Err(format!("unknown sidecar format {other:?}")),
        };
        if ledger != (s.seq.is_some() && s.prev.is_some()) || s.seq.is_some() != s.prev.is_some() {
            return Err(if ledger {
                format!("a {} needs seq and prev", s.format)
            } else {
                format!("a {} has no seq or prev", s.format)
            });
        }
        match (&s.blake3, blake3) {
            (Some(h), true) if is_sha256_hex(h) => {}
            (Some(_), true) => return Err("blake3 is not a BLAKE3 digest".into()),
            (None, true) => return Err(format!("a {} needs blake3", s.format)),
            (Some(_), false) => return Err(format!("a {} has no blake3", s.format)),
            (None, false) => {}
        }
        // Lower case, as written and as the ledger compares it: an upper
        // case `prev` would read as a fork of the job's history.
        if s.prev
            .as_deref()
            .is_some_and(|p| !(p.is_empty() || is_sha256_hex(p)))
        {
            return Err("prev is not a SHA-256".into());
        }
        if !is_sha256_hex(&s.sha256) {
            return Err("sha256 is not a SHA-256".into());
        }
        chrono::DateTime::parse_from_rfc3339(&s.created)
            .map_err(|e| format!("bad created time {:?}: {e}", s.created))?;
        Ok(s)
    }

    /// The digest a reader checks the sealed file by, and its hex: BLAKE3
    /// where the sidecar records one, else SHA-256.
    pub fn file_digest(&self) -> (HashKind, &str) {
        match &self.blake3 {
            Some(h) => (HashKind::Blake3, h),
            None => (HashKind::Sha256, &self.sha256),
        }
    }

    pub fn created(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.created)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

/// 64 lowercase hex digits: a SHA-256 or BLAKE3 digest.
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberEntry {
    /// The member's name; for a name that is not UTF-8, its lossy form
    /// (U+FFFD for each bad sequence), for people to read.
    pub path: String,
    /// A name that is not UTF-8, exactly: standard base64 of its bytes.
    /// Present only then, so each name has one encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    pub kind: String,
    pub size: u64,
    /// The content's SHA-256, hex (backups of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The content's BLAKE3, hex (backups whose header says `member_hash =
    /// "blake3"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
}

impl MemberEntry {
    /// The entry for the member named `name` (any bytes).
    pub fn named(name: &[u8], kind: &str, size: u64) -> Self {
        let (path, path_b64) = encode_name(name);
        MemberEntry {
            path,
            path_b64,
            kind: kind.to_owned(),
            size,
            sha256: None,
            blake3: None,
            parts: Vec::new(),
        }
    }

    /// The member's name as bytes, or why the entry is not well formed.
    pub fn name(&self) -> Result<Vec<u8>, String> {
        use base64::Engine;
        let Some(b64) = &self.path_b64 else {
            return Ok(self.path.as_bytes().to_vec());
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{}: path_b64 is not base64: {e}", self.path))?;
        if std::str::from_utf8(&raw).is_ok() {
            return Err(format!(
                "{}: path_b64 holds a UTF-8 name, which belongs in path",
                self.path
            ));
        }
        if String::from_utf8_lossy(&raw) != self.path {
            return Err(format!(
                "{}: path is not the lossy form of path_b64",
                self.path
            ));
        }
        Ok(raw)
    }
}

/// A name as the manifest writes it: itself if UTF-8, else its lossy form
/// and its bytes in base64.
pub fn encode_name(name: &[u8]) -> (String, Option<String>) {
    use base64::Engine;
    match std::str::from_utf8(name) {
        Ok(s) => (s.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(name).into_owned(),
            Some(base64::engine::general_purpose::STANDARD.encode(name)),
        ),
    }
}

/// A digest: of each member's content in the inner manifest, and of the
/// sealed file in its sidecar. BLAKE3 now for what coffer checks (the
/// fastest well-reviewed hash); the sidecar keeps the sealed file's SHA-256
/// too, which `sha256sum` can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    Sha256,
    Blake3,
}

impl HashKind {
    /// What the header's `member_hash` says; `None` if it names no known
    /// digest.
    pub fn of(member_hash: Option<&str>) -> Option<Self> {
        match member_hash {
            None | Some("sha256") => Some(HashKind::Sha256),
            Some("blake3") => Some(HashKind::Blake3),
            Some(_) => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HashKind::Sha256 => "sha256",
            HashKind::Blake3 => "blake3",
        }
    }

    /// The digest's name for people.
    pub fn label(self) -> &'static str {
        match self {
            HashKind::Sha256 => "SHA-256",
            HashKind::Blake3 => "BLAKE3",
        }
    }

    /// A running digest of this kind.
    pub fn hasher(self) -> Hasher {
        match self {
            HashKind::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
            HashKind::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    /// The entry's digest of this kind, or why it has none.
    pub fn of_entry(self, e: &MemberEntry) -> Result<Option<&str>, String> {
        let (mine, other) = match self {
            HashKind::Sha256 => (&e.sha256, &e.blake3),
            HashKind::Blake3 => (&e.blake3, &e.sha256),
        };
        if other.is_some() {
            // One digest per entry, of the archive's kind: a second one
            // would be checked by no one (FORMAT.md §5).
            return Err(format!(
                "{}: a digest other than the archive's {}",
                e.path,
                self.name()
            ));
        }
        Ok(mine.as_deref())
    }

    /// Sets the entry's digest of this kind.
    pub fn set(self, e: &mut MemberEntry, hex: Option<String>) {
        match self {
            HashKind::Sha256 => e.sha256 = hex,
            HashKind::Blake3 => e.blake3 = hex,
        }
    }
}

/// A running member digest.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => sha2::Digest::update(h, data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    pub fn finalize(self) -> [u8; 32] {
        match self {
            Hasher::Sha256(h) => sha2::Digest::finalize(h).into(),
            Hasher::Blake3(h) => *h.finalize().as_bytes(),
        }
    }
}

/// One member list: the members written since the previous list, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberList {
    pub format: String,
    pub members: Vec<MemberEntry>,
}

/// A member list as the inner manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListEntry {
    /// Its member name, `MANIFEST.d/NNNNNN.json`, numbered from 0.
    pub path: String,
    /// How many members it lists.
    pub members: u64,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

impl Inner {
    /// A manifest for `name` of `job`; the archive fills in its members and
    /// format as it closes.
    pub fn new(
        name: &str,
        job: &str,
        created: &str,
        host: &str,
        sources: Vec<SourceEntry>,
    ) -> Self {
        Inner {
            format: String::new(),
            name: name.to_owned(),
            job: job.to_owned(),
            created: created.to_owned(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            host: host.to_owned(),
            sources,
            members: Vec::new(),
            member_lists: Vec::new(),
        }
    }
}

/// The name of the `index`th member list.
pub fn list_name(index: usize) -> String {
    format!("{LIST_DIR}{index:06}.json")
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
    /// The members written after the last member list (all of them when
    /// there is none), in archive order.
    pub members: Vec<MemberEntry>,
    /// The member lists, in archive order (`coffer-manifest/2` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_lists: Vec<ListEntry>,
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
        sidecar_with(
            format,
            seq,
            prev,
            (format == SIDECAR_FORMAT).then(|| "cd".repeat(32)),
        )
    }

    fn sidecar_with(
        format: &str,
        seq: Option<u64>,
        prev: Option<&str>,
        blake3: Option<String>,
    ) -> Vec<u8> {
        serde_json::to_vec(&Sidecar {
            format: format.into(),
            name: "j-20261123T000100Z".into(),
            job: "j".into(),
            created: "2026-11-23T00:01:00.000Z".into(),
            size: 1,
            sha256: "ab".repeat(32),
            blake3,
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
    fn names_are_encoded_losslessly_and_one_way_only() {
        for name in [
            &b"files/etc/hosts"[..],
            b"files/x/\xff",
            b"files/x/\xfe",
            b"a\xc3",
        ] {
            let e = MemberEntry::named(name, "file", 0);
            assert_eq!(e.name().unwrap(), name);
            let back: MemberEntry =
                serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
            assert_eq!(back.name().unwrap(), name);
        }
        // Two names that collide once made lossy stay apart.
        let a = MemberEntry::named(b"x\xff", "file", 0);
        let b = MemberEntry::named(b"x\xfe", "file", 0);
        assert_eq!(a.path, b.path);
        assert_ne!(a.name().unwrap(), b.name().unwrap());
        // A UTF-8 name in path_b64, or a path that is not its lossy form, is
        // not well formed.
        let mut e = MemberEntry::named(b"x\xff", "file", 0);
        e.path = "y\u{fffd}".into();
        assert!(e.name().is_err());
        let mut e = MemberEntry::named(b"plain", "file", 0);
        e.path_b64 = Some("cGxhaW4=".into());
        assert!(e.name().is_err());
    }

    #[test]
    fn ledger_fields_belong_to_v2_and_later() {
        for v in [SIDECAR_FORMAT, SIDECAR_FORMAT_V2] {
            assert!(Sidecar::parse(&sidecar(v, Some(1), Some(""))).is_ok());
            assert!(Sidecar::parse(&sidecar(v, None, None)).is_err());
            assert!(Sidecar::parse(&sidecar(v, Some(1), None)).is_err());
            assert!(Sidecar::parse(&sidecar(v, Some(2), Some("xyz"))).is_err());
            // Lower case only, as FORMAT.md says and the ledger compares.
            assert!(Sidecar::parse(&sidecar(v, Some(2), Some(&"ab".repeat(32)))).is_ok());
            assert!(Sidecar::parse(&sidecar(v, Some(2), Some(&"AB".repeat(32)))).is_err());
        }
        assert!(Sidecar::parse(&sidecar(SIDECAR_FORMAT_V1, None, None)).is_ok());
        assert!(Sidecar::parse(&sidecar(SIDECAR_FORMAT_V1, Some(1), Some(""))).is_err());
    }

    /// FORMAT.md §6: a key given twice, or a value of another type, is
    /// refused, as an unknown key is.
    #[test]
    fn duplicate_keys_and_wrong_types_are_refused() {
        let good = sidecar(SIDECAR_FORMAT, Some(1), Some(""));
        assert!(Sidecar::parse(&good).is_ok());
        let text = String::from_utf8(good).unwrap();
        let twice = text.replacen('{', "{\"job\":\"other\",", 1);
        assert!(Sidecar::parse(twice.as_bytes()).is_err(), "{twice}");
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["size"] = "12".into();
        assert!(Sidecar::parse(&serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn blake3_belongs_to_v3_and_is_what_a_reader_checks() {
        let v3 = Sidecar::parse(&sidecar(SIDECAR_FORMAT, Some(1), Some(""))).unwrap();
        assert_eq!(
            v3.file_digest(),
            (HashKind::Blake3, "cd".repeat(32).as_str())
        );
        let v2 = Sidecar::parse(&sidecar(SIDECAR_FORMAT_V2, Some(1), Some(""))).unwrap();
        assert_eq!(
            v2.file_digest(),
            (HashKind::Sha256, "ab".repeat(32).as_str())
        );
        let some = || Some("cd".repeat(32));
        for (format, blake3, ok) in [
            (SIDECAR_FORMAT, None, false),
            (SIDECAR_FORMAT, Some("CD".repeat(32)), false),
            (SIDECAR_FORMAT, Some("cd".repeat(31)), false),
            (SIDECAR_FORMAT_V2, some(), false),
            (SIDECAR_FORMAT_V1, some(), false),
        ] {
            let (seq, prev) = if format == SIDECAR_FORMAT_V1 {
                (None, None)
            } else {
                (Some(1), Some(""))
            };
            let bytes = sidecar_with(format, seq, prev, blake3.clone());
            assert_eq!(Sidecar::parse(&bytes).is_ok(), ok, "{format} {blake3:?}");
        }
    }
}
