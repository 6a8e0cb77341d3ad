//! `coffer open`: decrypt and authenticate a sealed stream.

use crate::envelope::{self, Identity, OpenError};
use crate::error::{Error, Result};
use crate::pipeline::plumbing::io::{Input, Output};
use crate::pipeline::seal::copy;

/// Returns the number of plaintext bytes written. On any failure the output
/// file is removed (stdout may have received authenticated chunks already).
pub fn open(identities: &[Identity], input: &Input, output: Output) -> Result<u64> {
    let in_name = input.name();
    let out_name = output.name();
    let reader = input.open()?;
    let (_header, mut plain) = envelope::open(identities, reader).map_err(|e| match e {
        OpenError::Envelope(e) => Error::envelope(&in_name, e),
        OpenError::Io(e) => Error::io(&in_name, "read", e),
    })?;
    let mut output = output;
    let n = copy(&mut plain, &mut output, &in_name, &out_name)?;
    output.commit()?;
    Ok(n)
}
