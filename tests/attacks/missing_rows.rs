//! Attack: claims success without writing any score. Expected: `InvalidOutput(MissingRows)`.
use autoprune_sdk::prelude::*;
struct Lazy;
impl Metric for Lazy {
    fn info() -> Info { Info::new("missing-rows", "0", "writes nothing") }
    fn score(_layer: &Layer) -> Result<()> { Ok(()) }
}
export_metric!(Lazy);
