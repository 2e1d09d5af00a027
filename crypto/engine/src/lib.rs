//! The DELPHI protocol engine's front end: the `delphi` command line. The
//! engine's building blocks live in `delphi-crypto` (field, OT, garbling,
//! ReLU layers) and `delphi-net` (the network description).
