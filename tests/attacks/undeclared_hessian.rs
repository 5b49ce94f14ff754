//! Attack: reads the WIT 0.2.0 inputs through the raw bindings without declaring them, and
//! scores with whatever it got. Expected: both calls answer `unsupported`, which the guest
//! reports back: `GuestError { kind: "unsupported" }` naming both.
use autoprune_sdk::prelude::*;
use autoprune_sdk::bindings::autoprune::metric::{host, types};
struct Sneaky;
impl Metric for Sneaky {
    fn info() -> Info { Info::new("undeclared-hessian", "0", "reads what it did not declare") }
    fn score(layer: &Layer) -> Result<()> {
        let hinv = host::hessian_inverse_diagonal();
        let out = host::output_stats();
        match (hinv, out) {
            (Err(types::Error::Unsupported(a)), Err(types::Error::Unsupported(b))) => {
                Err(Error::unsupported(format!("hessian: {a}; output: {b}")))
            }
            (Ok(h), _) => layer.score_rows(|_, o| o.copy_from_slice(&h)),
            (_, Ok(s)) => layer.score_rows(|row, o| o.fill(s.l2_norm[row.index as usize])),
            _ => Err(Error::failed("an unexpected error kind")),
        }
    }
}
export_metric!(Sneaky);
