//! `coffer seal`: encrypt a stream to recipients.

use std::io;

use crate::envelope::{self, Metadata, Recipient, SealError};
use crate::error::{Error, Result};
use crate::pipeline::plumbing::io::{Input, Output};

pub struct SealRequest<'a> {
    pub recipients: &'a [Recipient],
    pub input: Input,
    pub output: Output,
    pub metadata: Metadata,
    pub chunk_size: u32,
}

/// Returns the number of plaintext bytes sealed.
pub fn seal(req: SealRequest<'_>) -> Result<u64> {
    let in_name = req.input.name();
    let input = req.input.open()?;
    seal_reader(
        req.recipients,
        input,
        &in_name,
        req.output,
        req.metadata,
        req.chunk_size,
    )
}

/// Seals everything `input` yields into `output`, committed only if all went well.
pub fn seal_reader(
    recipients: &[Recipient],
    mut input: Box<dyn io::Read>,
    in_name: &std::path::Path,
    output: Output,
    metadata: Metadata,
    chunk_size: u32,
) -> Result<u64> {
    let out_name = output.name();
    let mut w = envelope::seal(recipients, metadata, chunk_size, output).map_err(|e| match e {
        SealError::Envelope(e) => Error::envelope(&out_name, e),
        SealError::Io(e) => Error::io(&out_name, "write", e),
    })?;
    copy(&mut input, &mut w, in_name, &out_name)?;
    let n = w.plaintext_len();
    let out = w.finish().map_err(|e| Error::io(&out_name, "write", e))?;
    out.commit()?;
    Ok(n)
}

/// Copies with errors attributed to the side that failed.
pub fn copy(
    r: &mut dyn io::Read,
    w: &mut dyn io::Write,
    r_name: &std::path::Path,
    w_name: &std::path::Path,
) -> Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(r_name, "read", e)),
        };
        w.write_all(&buf[..n])
            .map_err(|e| Error::io(w_name, "write", e))?;
        total += n as u64;
    }
}
