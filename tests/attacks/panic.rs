//! Attack: panics with a message. Expected: `Panic { message }` carrying the message.
use autoprune_sdk::prelude::*;
struct Boom;
impl Metric for Boom {
    fn info() -> Info { Info::new("panic", "0", "panics") }
    fn score(layer: &Layer) -> Result<()> {
        panic!("boom: layer of {} columns is cursed", layer.cols());
    }
}
export_metric!(Boom);
