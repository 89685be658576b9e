//! Seeded deterministic simulator for warren (built out in its own issue).

fn main() {
    eprintln!("warren-sim: the simulator is not built yet");
    std::process::exit(2);
}
