//! Images per second of the fixed-point reference on a built-in network:
//! `cargo run --release -p delphi-net --example fixed_speed -- small-cnn 2000`
//! (a third argument `batched` skips the one-at-a-time pass).
#![allow(clippy::unwrap_used)]

fn main() {
    let mut args = std::env::args().skip(1);
    let arch = args.next().unwrap_or_else(|| "small-cnn".into());
    let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let net = delphi_net::builtin::build(&arch, 10, 1).unwrap();
    let prog = delphi_net::FixedProgram::lower(&net).unwrap();
    let inputs: Vec<_> = delphi_net::eval::random_inputs(net.input.len(), 16, 2)
        .iter()
        .map(|x| prog.encode_input(x).unwrap())
        .collect();
    let single = args.next().as_deref() != Some("batched");
    let t = std::time::Instant::now();
    let mut check = 0i64;
    for i in (0..n).filter(|_| single) {
        let y = prog.eval(&inputs[i % inputs.len()]).unwrap();
        check = check.wrapping_add(y[0].to_signed());
    }
    let s = t.elapsed().as_secs_f64();
    if single {
        println!(
            "{arch}: {n} images in {s:.2} s, {:.0} images/s on one thread, one at a time (checksum {check})",
            n as f64 / s
        );
    }
    // The same images in the program's preferred batches.
    let nb = prog.preferred_batch();
    let batch: Vec<_> = (0..nb).map(|i| inputs[i % inputs.len()].clone()).collect();
    let t = std::time::Instant::now();
    let mut check = 0i64;
    let mut done = 0;
    while done < n {
        let k = (n - done).min(nb);
        for y in prog.eval_batch(&batch[..k]).unwrap() {
            check = check.wrapping_add(y[0].to_signed());
        }
        done += k;
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{arch}: {n} images in {s:.2} s, {:.0} images/s on one thread in batches of {nb} (checksum {check})",
        n as f64 / s
    );
}
