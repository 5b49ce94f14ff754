//! Attack: writes one score too few through the raw interface. Expected: `InvalidOutput(WrongLength)`.
use autoprune_sdk::prelude::*;
use autoprune_sdk::bindings::autoprune::metric::host;
struct Short;
impl Metric for Short {
    fn info() -> Info { Info::new("wrong-length", "0", "short write") }
    fn score(layer: &Layer) -> Result<()> {
        let n = layer.info().tile_rows as usize * layer.cols() - 1;
        let _ = host::write_scores(0, &vec![1.0; n]);
        Ok(())
    }
}
export_metric!(Short);
