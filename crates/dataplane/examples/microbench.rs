//! Prints the micro-benchmark figures (root): `cargo run --release -p dataplane --example microbench [repeat]`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repeat = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => dataplane::microbench::DEFAULT_REPEAT,
    };
    for r in dataplane::microbench::run(repeat)? {
        println!(
            "{:<15} {:<14} {:<22} {:<4} {:>6.1} ns/packet",
            r.program.as_str(),
            r.csum_mode.as_str(),
            r.case,
            r.packet,
            r.ns_per_packet
        );
    }
    Ok(())
}
