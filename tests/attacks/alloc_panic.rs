//! Allocator attack: panics with a message. Expected: Panic with the message.
use autoprune_sdk::prelude::*;
struct Bad;
impl Allocator for Bad {
    fn describe() -> AllocatorInfo { AllocatorInfo::new("alloc-panic", "0", "panics with a message. Expected: Panic with the message.") }
    fn allocate(req: &Request) -> Result<Vec<f64>> {
        panic!("allocator boom: {} units", req.units.len())
    }
}
export_allocator!(Bad);
