//! Oblivious transfer: Chou–Orlandi base OT on Ristretto and IKNP/ALSZ
//! extension to correlated OTs (label1 = label0 ⊕ Δ) for garbled-circuit
//! input labels.

pub mod base;
pub mod iknp;
mod transpose;

pub use base::{base_ot_receive, base_ot_send};
pub use iknp::{CotReceiver, CotSender};
