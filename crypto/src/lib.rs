//! The DELPHI protocol engine's core: the prime field and fixed point,
//! additive shares, channels, oblivious transfer, half-gates garbling and the
//! ReLU layer protocol and faithful truncation.
//!
//! Security model: semi-honest two-party. The client (evaluator) learns the
//! prediction; the server (garbler) learns nothing.

pub mod bench;
pub mod block;
pub mod channel;
pub mod codec;
pub mod error;
pub mod field;
pub mod fixed;
pub mod gc;
pub mod ot;
pub mod relu;
pub mod share;
pub mod trunc;

pub use error::{Error, Result};
pub use field::F;
