//! Writes small-cnn descriptions with random weights under the placements
//! given on the command line, for trying the cost model on them:
//! `cargo run --release -p delphi-net --example mkplans -- DIR RRR QQQ`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((dir, placements)) = args.split_first() else {
        return Err("usage: mkplans DIR PLACEMENT...".into());
    };
    for p in placements {
        let mut net = delphi_net::builtin::build("small-cnn", 10, 1)?;
        p.parse::<delphi_net::Placement>()?.apply(&mut net)?;
        let path = std::path::Path::new(dir).join(format!("{p}.json"));
        net.save(&path, delphi_net::WeightStorage::Inline)?;
    }
    Ok(())
}
