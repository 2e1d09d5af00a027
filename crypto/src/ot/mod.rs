//! Oblivious transfer: Chou–Orlandi base OT on Ristretto, IKNP/ALSZ
//! extension to correlated OTs (label1 = label0 ⊕ Δ) for garbled-circuit
//! input labels, and silent OT (Ferret) bootstrapped from it, served by
//! pools that give a whole offline phase its OTs under one Δ.

pub mod base;
pub mod iknp;
pub mod silent;
mod transpose;

pub use base::{base_ot_receive, base_ot_send};
pub use iknp::{CotReceiver, CotSender};
pub use silent::{CotKind, CotReceiverPool, CotSenderPool};
