//! Allocator attack: every unit 0.01 above the target. Expected: BadAllocation(WrongMean).
use autoprune_sdk::prelude::*;
struct Bad;
impl Allocator for Bad {
    fn describe() -> AllocatorInfo { AllocatorInfo::new("alloc-wrong_mean", "0", "every unit 0.01 above the target. Expected: BadAllocation(WrongMean).") }
    fn allocate(req: &Request) -> Result<Vec<f64>> {
        Ok(vec![req.target + 0.01; req.units.len()])
    }
}
export_allocator!(Bad);
