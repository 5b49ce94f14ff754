//! Allocator attack: unit 0 gets 1.5. Expected: BadAllocation(OutOfRange { unit: 0 }).
use autoprune_sdk::prelude::*;
struct Bad;
impl Allocator for Bad {
    fn describe() -> AllocatorInfo { AllocatorInfo::new("alloc-out_of_range", "0", "unit 0 gets 1.5. Expected: BadAllocation(OutOfRange { unit: 0 }).") }
    fn allocate(req: &Request) -> Result<Vec<f64>> {
        let mut s = vec![req.target; req.units.len()];
        s[0] = 1.5;
        Ok(s)
    }
}
export_allocator!(Bad);
