//! `coffer inspect`: what a sealed file says about itself, without a key.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use serde::Serialize;

use crate::envelope::{Header, Metadata, OpenError, TAG_LEN};
use crate::error::{Error, Result};

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub file: String,
    pub format_version: u16,
    pub header_bytes: u64,
    pub chunk_size: u32,
    pub metadata: Metadata,
    pub recipients: Vec<RecipientInfo>,
    /// From the file size: the payload's length and chunk count (unauthenticated).
    pub payload_bytes: Option<u64>,
    pub chunks: Option<u64>,
    pub plaintext_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct RecipientInfo {
    pub kind: String,
    pub fingerprint: String,
}

pub fn inspect(path: &Path) -> Result<Inspection> {
    let f = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let size = f
        .metadata()
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len());
    let (header, raw) = Header::read(&mut BufReader::new(f)).map_err(|e| match e {
        OpenError::Envelope(e) => Error::envelope(path, e),
        OpenError::Io(e) => Error::io(path, "read", e),
    })?;
    let header_bytes = raw.len() as u64;
    let payload_bytes = size.map(|s| s.saturating_sub(header_bytes));
    let full = u64::from(header.chunk_size) + TAG_LEN as u64;
    let chunks = payload_bytes.map(|p| p.div_ceil(full).max(1));
    let plaintext_bytes = payload_bytes
        .zip(chunks)
        .map(|(p, c)| p.saturating_sub(c * TAG_LEN as u64));
    Ok(Inspection {
        file: path.display().to_string(),
        format_version: header.version,
        header_bytes,
        chunk_size: header.chunk_size,
        recipients: header
            .stanzas
            .iter()
            .map(|s| RecipientInfo {
                kind: s.kind.clone(),
                fingerprint: format!("SHA256:{}", hex::encode(s.fingerprint)),
            })
            .collect(),
        metadata: header.metadata,
        payload_bytes,
        chunks,
        plaintext_bytes,
    })
}
