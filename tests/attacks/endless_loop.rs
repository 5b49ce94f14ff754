//! Attack: never returns. Expected: `Timeout` (epoch deadline) or `OutOfFuel`, per the policy.
use autoprune_sdk::prelude::*;
struct Spin;
impl Metric for Spin {
    fn info() -> Info { Info::new("endless-loop", "0", "spins forever") }
    fn score(_layer: &Layer) -> Result<()> {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}
export_metric!(Spin);
