//! afterlog: an embedded, crash-safe engine for delayed and background events.
//!
//! Events are published now or up to a year ahead, kept in a write-ahead segment log, and
//! delivered at least once to the handlers registered for their name.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::big_endian_bytes, clippy::host_endian_bytes)]

mod error;
pub mod wheel;

pub use error::{Error, Result};
