//! Attack: scores that are NaN (0/0). Expected: `InvalidOutput(NonFinite)`.
use autoprune_sdk::prelude::*;
struct NotANumber;
impl Metric for NotANumber {
    fn info() -> Info { Info::new("nan-output", "0", "0/0") }
    fn score(layer: &Layer) -> Result<()> {
        let zero = std::hint::black_box(0.0f32);
        layer.score_rows(|row, out| {
            for (o, w) in out.iter_mut().zip(row.weights) { *o = w.abs() * zero / zero; }
        })
    }
}
export_metric!(NotANumber);
