//! Attack: every score equal. Under `--pattern layer` the reference's `<= threshold` rule
//! prunes every tie, i.e. the whole layer. Expected: `InvalidOutput(SparsityOvershoot)`.
use autoprune_sdk::prelude::*;
struct AllEqual;
impl Metric for AllEqual {
    fn info() -> Info { Info::new("all-equal", "0", "1 everywhere") }
    fn score(layer: &Layer) -> Result<()> {
        layer.score_rows(|_, out| out.fill(1.0))
    }
}
export_metric!(AllEqual);
