//! Inference alone, for profiling: a built-in architecture's forward pass
//! (no autodiff, allocator tuned as the binaries tune it) on random 32×32×3 or 28×28×1 images, batch as the accuracy
//! pass sizes it, repeated; prints images/s of each pass.
//!
//! `cargo run --release -p delphi-train --example infer_speed [arch] [passes]`

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use delphi_train::evaluate::inference_batch;
use delphi_train::model::Net;

fn main() {
    delphi_train::tune_allocator();
    let mut args = std::env::args().skip(1);
    let arch = args.next().unwrap_or_else(|| "minionn".into());
    let passes: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let device = Device::flex();
    let net = match delphi_net::builtin::build(&arch, 10, 1) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{arch}: {e}");
            std::process::exit(2);
        }
    };
    let model = match Net::from_description(&net, true, &device) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{arch}: {e}");
            std::process::exit(2);
        }
    };
    let n = inference_batch(&model);
    let s = net.input;
    let x = Tensor::<4>::random(
        [n, s.channels, s.height, s.width],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    for pass in 0..passes {
        let t = Instant::now();
        let y = model.forward(x.clone());
        let _ = delphi_train::model::values(y);
        let dt = t.elapsed().as_secs_f64();
        println!("pass {pass}: batch {n}, {:.0} images/s", n as f64 / dt);
    }
}
