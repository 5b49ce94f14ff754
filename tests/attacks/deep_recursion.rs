//! Attack: unbounded recursion. Expected: `StackOverflow`.
use autoprune_sdk::prelude::*;
struct Deep;
fn down(n: u64) -> u64 {
    if n == 0 { 0 } else { std::hint::black_box(down(std::hint::black_box(n - 1))) + 1 }
}
impl Metric for Deep {
    fn info() -> Info { Info::new("deep-recursion", "0", "recurses forever") }
    fn score(_layer: &Layer) -> Result<()> {
        let depth = down(std::hint::black_box(1u64 << 40));
        Err(Error::failed(format!("unreachable depth {depth}")))
    }
}
export_metric!(Deep);
