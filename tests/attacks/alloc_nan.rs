//! Allocator attack: unit 1 is NaN. Expected: BadAllocation(NonFinite { unit: 1 }).
use autoprune_sdk::prelude::*;
struct Bad;
impl Allocator for Bad {
    fn describe() -> AllocatorInfo { AllocatorInfo::new("alloc-nan", "0", "unit 1 is NaN. Expected: BadAllocation(NonFinite { unit: 1 }).") }
    fn allocate(req: &Request) -> Result<Vec<f64>> {
        let mut s = vec![req.target; req.units.len()];
        s[1] = f64::NAN;
        Ok(s)
    }
}
export_allocator!(Bad);
