//! `delphi-train`: trains a network for a DELPHI plan (work in progress).

fn main() {}
