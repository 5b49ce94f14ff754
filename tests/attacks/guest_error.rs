//! A metric that declines a layer. Expected: `GuestError { kind: "unsupported" }`.
use autoprune_sdk::prelude::*;
struct Picky;
impl Metric for Picky {
    fn info() -> Info { Info::new("guest-error", "0", "declines") }
    fn score(layer: &Layer) -> Result<()> {
        Err(Error::unsupported(format!("{} columns is not a power of two", layer.cols())))
    }
}
export_metric!(Picky);
