//! The only layer that composes the leaves. Each command's logic lives here;
//! the CLI turns arguments into these calls and prints their results.

pub mod backup;
pub mod client;
pub mod ingest;
pub mod inspect;
pub mod io;
pub mod job;
pub mod keygen;
pub mod keys;
pub mod legacy;
pub mod load;
pub mod locate;
pub mod notify;
pub mod open;
pub mod restore;
pub mod retention;
pub mod scratch;
pub mod scratch_pg;
pub mod seal;
pub mod sqlclient;
pub mod verify;
pub mod walk;
