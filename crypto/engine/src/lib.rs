//! The DELPHI protocol engine: BFV linear layers, Beaver triples and the
//! two-party network protocol, on top of `delphi-crypto` (field, OT,
//! garbling, ReLU layers) and `delphi-net` (the network description). The
//! `delphi` command line is the `delphi-cli` crate (`crypto/cli`).

pub mod error;
pub mod he;
pub mod ledger;
pub mod params;
pub mod protocol;
pub mod run;
pub mod seal_check;
pub mod session;
pub mod store;

pub use error::{EngineError, Result, StoreProblem};
