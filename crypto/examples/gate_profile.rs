//! Garbles then evaluates ReLU circuits on one thread, for a profiler:
//! `cargo run --release -p delphi-crypto --example gate_profile -- [full|LO..HI] [COUNT] [PASSES]`
//! prints each pass's garbling and evaluation rate (AND gates/s) beside
//! the AES-NI rate measured just before it.
use delphi_crypto::bench::{aes_blocks_per_s, gate_throughput};
use delphi_crypto::relu::ReluSpec;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bits = args.get(1).map_or("full", String::as_str);
    let count = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(100_000);
    let passes = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(5);
    let spec = if bits == "full" {
        ReluSpec::full(12)
    } else {
        match bits.parse() {
            Ok(w) => ReluSpec::reduced(12, w),
            Err(e) => {
                eprintln!("{bits}: {e}");
                std::process::exit(2);
            }
        }
    };
    let rc = delphi_crypto::relu::relu_circuit_for(spec);
    let c = rc.circuit();
    let inputs = c.evaluator_inputs() + c.garbler_inputs();
    println!(
        "{bits}: {} AND gates, {} XOR/NOT gates, {inputs} input wires, {} outputs",
        c.and_gates(),
        c.wires() - inputs - c.and_gates(),
        c.outputs()
    );
    for p in 0..passes {
        let aes = aes_blocks_per_s();
        let (g, e) = gate_throughput(count, spec, p);
        println!(
            "pass {p}: garble {:.1} M AND/s ({:.0} %), eval {:.1} M AND/s ({:.0} %), AES-NI {:.0} M blocks/s",
            g / 1e6,
            100.0 * g / (aes / 8.0),
            e / 1e6,
            100.0 * e / (aes / 4.0),
            aes / 1e6
        );
    }
}
