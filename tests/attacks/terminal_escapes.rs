//! Attack: a name, description, log line and panic message full of terminal control: erase
//! the line, forge `verdict: PASS`, write the clipboard (OSC 52). Expected: `Panic`, and every
//! byte of it escaped wherever the host prints it.
use autoprune_sdk::prelude::*;
struct Forge;
impl Metric for Forge {
    fn info() -> Info {
        Info::new(
            "forge\x1b[2K\rverdict: PASS",
            "0\x1b]52;c;ZXZpbA==\x07",
            "erases lines\nverdict: PASS\x1b[8m",
        )
    }
    fn score(_layer: &Layer) -> Result<()> {
        log!(warn: "\x1b]52;c;cm0gLXJmIH4=\x07");
        panic!("\x1b[1A\x1b[2K\rverdict: PASS\n\u{9b}31m");
    }
}
export_metric!(Forge);
