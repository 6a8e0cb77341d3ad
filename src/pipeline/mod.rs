//! The only layer that composes the leaves. One room per use case, found by
//! the command an operator runs; the CLI turns arguments into these calls and
//! prints their results. docs/ARCHITECTURE.md draws the rooms.
//!
//! - [`backup`]: `coffer backup`, the nightly run (naming, fan-out to the
//!   stores, sidecar and ledger, refill, and the hook and metrics after it).
//! - [`restore`]: `coffer restore`: spool and stage, the authenticated walk
//!   over a backup, extraction into a directory, the load into a database.
//! - [`verify`]: `coffer verify`, keyless and keyed.
//! - [`drill`]: `verify --restore-test`: scratch MariaDB and PostgreSQL
//!   servers, the load into them and the row counts.
//! - [`ingest`], [`prune`]: the backup server's own commands.
//! - [`seal`], [`open`], [`inspect`], [`keygen`], [`legacy`]: one-file
//!   commands.
//!
//! Shared by the rooms above, and never importing them:
//! - [`job`]: a configuration turned into what a run needs (stores, keys, the
//!   lock), with every check that can fail before a byte is dumped.
//! - [`catalog`]: what a store holds and finding a backup in it.
//! - [`keys`]: recipients and identities from the places users name them.
//! - [`plumbing`]: stream I/O, named threads, the database client runner.

pub mod backup;
pub mod catalog;
pub mod drill;
pub mod ingest;
pub mod inspect;
pub mod job;
pub mod keygen;
pub mod keys;
pub mod legacy;
pub mod open;
pub mod plumbing;
pub mod prune;
pub mod restore;
pub mod seal;
pub mod verify;
