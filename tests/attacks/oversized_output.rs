//! Attack: one write of 64 MiB of scores. Expected: `InvalidOutput(Oversized)` (hostcall fuel).
use autoprune_sdk::prelude::*;
use autoprune_sdk::bindings::autoprune::metric::host;
struct Flood;
impl Metric for Flood {
    fn info() -> Info { Info::new("oversized-output", "0", "floods the host") }
    fn score(_layer: &Layer) -> Result<()> {
        let huge = vec![1.0f32; 16 << 20];
        host::write_scores(0, &huge).map_err(|_| Error::failed("refused"))
    }
}
export_metric!(Flood);
