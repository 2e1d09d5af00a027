//! The network description shared by the planner, the trainer and the
//! protocol engine: a versioned JSON format (weights inline or in a
//! safetensors sidecar), validation with errors that name the layer,
//! built-in architectures, a float evaluator, and the fixed-point program
//! with its plaintext reference evaluator — the exact arithmetic the
//! two-party protocol performs.

pub mod builtin;
pub mod desc;
pub mod error;
pub mod eval;
pub mod fixed;
pub mod linear;
pub mod packing;
pub mod paths;
pub mod placement;
pub mod range;
pub mod text;
pub mod window;

pub use desc::{
    Activation, ActivationRange, Layer, Network, Normalization, Op, Padding, Shape, WeightStorage,
};
pub use error::{NetError, Result};
pub use fixed::{FixedOp, FixedProgram};
pub use placement::Placement;
