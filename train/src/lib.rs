//! Training for DELPHI plans: Burn models built from the shared network
//! description with ReLU or learnable quadratic activations, datasets,
//! float and fixed-point evaluation, export to the description the protocol
//! engine runs.

pub mod arch;
pub mod bench;
pub mod data;
pub mod device;
pub mod model;
pub mod train;
