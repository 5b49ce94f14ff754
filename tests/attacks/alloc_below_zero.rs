//! Attack: one sparsity a hair below 0 (−5e-10, inside validation's 1e-9 slack), the others
//! raised so the mean is right. Expected: accepted, clamped into the bounds — never a negative
//! sparsity in mask building.
use autoprune_sdk::prelude::*;
struct BelowZero;
impl Allocator for BelowZero {
    fn describe() -> AllocatorInfo {
        AllocatorInfo::new("below-zero", "0", "returns -5e-10 for the first unit")
    }
    fn allocate(req: &Request) -> Result<Vec<f64>> {
        let params = req.params();
        let total: f64 = params.iter().map(|&p| p as f64).sum();
        let first = -5e-10;
        let rest = (req.target * total - first * params[0] as f64) / (total - params[0] as f64);
        let mut s = vec![rest; params.len()];
        s[0] = first;
        Ok(s)
    }
}
export_allocator!(BelowZero);
