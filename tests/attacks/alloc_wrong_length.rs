//! Allocator attack: one sparsity too few. Expected: BadAllocation(WrongLength).
use autoprune_sdk::prelude::*;
struct Bad;
impl Allocator for Bad {
    fn describe() -> AllocatorInfo { AllocatorInfo::new("alloc-wrong_length", "0", "one sparsity too few. Expected: BadAllocation(WrongLength).") }
    fn allocate(req: &Request) -> Result<Vec<f64>> {
        Ok(vec![req.target; req.units.len() - 1])
    }
}
export_allocator!(Bad);
