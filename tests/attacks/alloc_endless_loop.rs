//! Allocator attack: never returns. Expected: Timeout or OutOfFuel, per the policy.
use autoprune_sdk::prelude::*;
struct Bad;
impl Allocator for Bad {
    fn describe() -> AllocatorInfo { AllocatorInfo::new("alloc-endless_loop", "0", "never returns. Expected: Timeout or OutOfFuel, per the policy.") }
    fn allocate(req: &Request) -> Result<Vec<f64>> {
        let mut x = req.units.len() as u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}
export_allocator!(Bad);
