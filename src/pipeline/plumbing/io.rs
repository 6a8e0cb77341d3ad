//! Where a command reads from and writes to: a file or the standard streams.

use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::AtomicFile;

/// 1 MiB buffers keep syscalls rare without costing memory that matters.
pub const BUF_SIZE: usize = 1 << 20;

pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    pub fn from_arg(arg: Option<&Path>) -> Self {
        match arg {
            None => Input::Stdin,
            Some(p) if p == Path::new("-") => Input::Stdin,
            Some(p) => Input::File(p.to_path_buf()),
        }
    }

    /// A name for messages.
    pub fn name(&self) -> PathBuf {
        match self {
            Input::Stdin => PathBuf::from("<stdin>"),
            Input::File(p) => p.clone(),
        }
    }

    pub fn open(&self) -> Result<Box<dyn Read>> {
        Ok(match self {
            Input::Stdin => Box::new(BufReader::with_capacity(BUF_SIZE, io::stdin().lock())),
            Input::File(p) => Box::new(BufReader::with_capacity(
                BUF_SIZE,
                File::open(p).map_err(|e| Error::io(p, "open", e))?,
            )),
        })
    }
}

/// An output sink: stdout (refused on a terminal for binary data) or a new
/// file written atomically and never over an existing one.
pub enum Output {
    Stdout(io::BufWriter<io::Stdout>),
    File(io::BufWriter<AtomicFile>),
}

impl Output {
    pub fn create(arg: Option<&Path>, mode: u32) -> Result<Self> {
        match arg {
            None => Self::stdout(),
            Some(p) if p == Path::new("-") => Self::stdout(),
            Some(p) => Ok(Output::File(io::BufWriter::with_capacity(
                BUF_SIZE,
                AtomicFile::create(p, mode)?,
            ))),
        }
    }

    fn stdout() -> Result<Self> {
        if io::stdout().is_terminal() {
            return Err(Error::BinaryToTerminal);
        }
        Ok(Output::Stdout(io::BufWriter::with_capacity(
            BUF_SIZE,
            io::stdout(),
        )))
    }

    pub fn name(&self) -> PathBuf {
        match self {
            Output::Stdout(_) => PathBuf::from("<stdout>"),
            Output::File(f) => f.get_ref().target().to_path_buf(),
        }
    }

    /// Flushes and, for a file, fsyncs and moves it into place.
    pub fn commit(self) -> Result<()> {
        let name = self.name();
        match self {
            Output::Stdout(mut w) => w.flush().map_err(|e| Error::io(name, "write", e)),
            Output::File(w) => w
                .into_inner()
                .map_err(|e| Error::io(name, "write", e.into_error()))?
                .commit()
                .map_err(Error::from),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout(w) => w.write(buf),
            Output::File(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout(w) => w.flush(),
            Output::File(w) => w.flush(),
        }
    }
}
