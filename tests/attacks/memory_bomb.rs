//! Attack: allocates without bound. Expected: `OutOfMemory`.
use autoprune_sdk::prelude::*;
struct Bomb;
impl Metric for Bomb {
    fn info() -> Info { Info::new("memory-bomb", "0", "allocates forever") }
    fn score(_layer: &Layer) -> Result<()> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![7u8; 16 << 20]));
        }
    }
}
export_metric!(Bomb);
