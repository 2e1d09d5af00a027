//! Boolean circuits and half-gates garbling.
//!
//! A circuit is written once against the [`Fancy`] trait and run by four
//! interpreters: [`Builder`] records it as a [`Circuit`], which the batched
//! [`Garbler`] and [`Evaluator`] run over many instances at a time;
//! [`PlainEval`] computes it on plaintext bits and [`GateCounter`] counts its
//! gates without any cryptography.

mod circuit;
mod convert;
mod garble;

pub use circuit::{Builder, Circuit, Fancy, Gate, GateCounter, PlainEval};
pub use convert::{Conversion, Product};
pub use garble::{Evaluator, Garbler, BATCH};
