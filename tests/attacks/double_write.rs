//! Attack: scores the layer twice, overwriting rows. Expected: `InvalidOutput(RowWrittenTwice)`.
use autoprune_sdk::prelude::*;
use autoprune_sdk::bindings::autoprune::metric::host;
struct Twice;
impl Metric for Twice {
    fn info() -> Info { Info::new("double-write", "0", "writes row 0 twice") }
    fn score(layer: &Layer) -> Result<()> {
        let row = vec![1.0f32; layer.cols()];
        let _ = host::write_scores(0, &row);
        let _ = host::write_scores(0, &row);
        layer.score_rows(|_, out| out.fill(1.0))
    }
}
export_metric!(Twice);
