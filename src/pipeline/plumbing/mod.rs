//! Plumbing the use cases share: where a command reads and writes
//! ([`io`]), named threads ([`thread`]), signals ([`signals`]), and the
//! database clients coffer feeds a dump through ([`client`],
//! [`sqlclient`]). It knows no use case:
//! nothing here imports another room of `pipeline`.

pub mod client;
pub mod io;
pub mod signals;
pub mod sqlclient;
pub mod thread;
