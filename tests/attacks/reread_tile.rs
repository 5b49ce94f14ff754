//! Attack: re-reads the first tile 20,000 times (host work at almost no wasm fuel), then
//! scores. Expected: `OutOfFuel` — every host call is charged for the bytes it moves.
use autoprune_sdk::bindings::autoprune::metric::host;
use autoprune_sdk::prelude::*;
struct Reread;
impl Metric for Reread {
    fn info() -> Info { Info::new("reread", "0", "re-reads one tile") }
    fn score(layer: &Layer) -> Result<()> {
        let rows = layer.info().tile_rows.min(layer.info().rows);
        let mut first = 0.0f32;
        for _ in 0..20_000 {
            let tile = host::read_weights(0, rows).map_err(|_| Error::failed("read refused"))?;
            first += tile[0];
        }
        log!(debug: "{first}");
        layer.score_rows(|row, out| {
            for (o, w) in out.iter_mut().zip(row.weights) {
                *o = w.abs();
            }
        })
    }
}
export_metric!(Reread);
