//! Attack: one infinite score in the last row. Expected: `InvalidOutput(NonFinite)`.
use autoprune_sdk::prelude::*;
struct Infinite;
impl Metric for Infinite {
    fn info() -> Info { Info::new("inf-output", "0", "1/0 once") }
    fn score(layer: &Layer) -> Result<()> {
        let last = layer.rows() as u32 - 1;
        layer.score_rows(|row, out| {
            for (o, w) in out.iter_mut().zip(row.weights) { *o = w.abs(); }
            if row.index == last { out[3] = f32::INFINITY; }
        })
    }
}
export_metric!(Infinite);
