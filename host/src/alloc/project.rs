//! The projection that makes raw preferences a valid allocation: one common shift, clipped to
//! the bounds, with the right parameter-weighted mean.

use crate::units::{AllocError, Bounds};

/// Shift `raw` by one common offset `τ` and clip to `bounds` so that the parameter-weighted
/// mean of `clamp(raw + τ)` equals `target` (bisection on `τ`; the map is monotone).
///
/// This is the Euclidean projection (in the parameter-weighted norm) of `raw` onto the set of
/// allocations with the right mean and bounds. Fails when `target` is outside `bounds`, a raw
/// value is not finite, or `raw` and `params` differ in length (the checks of the guest SDK's
/// `autoprune_sdk::project_to_mean`, which computes the same values).
pub fn project_to_mean(
    raw: &[f64],
    params: &[u64],
    target: f64,
    bounds: Bounds,
) -> Result<Vec<f64>, AllocError> {
    if raw.len() != params.len() {
        return Err(AllocError::Request(format!(
            "{} raw values for {} units",
            raw.len(),
            params.len()
        )));
    }
    if target < bounds.min - 1e-12 || target > bounds.max + 1e-12 {
        return Err(AllocError::Request(format!(
            "target {target} outside the bounds [{}, {}]",
            bounds.min, bounds.max
        )));
    }
    if raw.iter().any(|v| !v.is_finite()) {
        return Err(AllocError::Request("non-finite raw allocation".to_string()));
    }
    let total: f64 = params.iter().map(|&p| p as f64).sum();
    let mean_at = |tau: f64| -> f64 {
        raw.iter()
            .zip(params)
            .map(|(&r, &p)| (r + tau).clamp(bounds.min, bounds.max) * p as f64)
            .sum::<f64>()
            / total
    };
    let lo_raw = raw.iter().copied().fold(f64::INFINITY, f64::min);
    let hi_raw = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    // At τ = lo the mean is bounds.min, at τ = hi it is bounds.max.
    let (mut lo, mut hi) = (bounds.min - hi_raw - 1.0, bounds.max - lo_raw + 1.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mean_at(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-15 {
            break;
        }
    }
    let tau = 0.5 * (lo + hi);
    Ok(raw
        .iter()
        .map(|&r| (r + tau).clamp(bounds.min, bounds.max))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw values, parameters, target, min, max.
    type Case = (&'static [f64], &'static [u64], f64, f64, f64);

    /// The host's projection and the guest SDK's give the same bits on the same inputs, and
    /// both refuse mismatched lengths (an error, not a panic).
    #[test]
    fn host_and_sdk_projections_agree() {
        let cases: &[Case] = &[
            (&[0.0, 0.9, 1.5, 0.6], &[10, 10, 10, 70], 0.6, 0.4, 0.8),
            (&[0.9, 0.5, 0.1], &[1, 1, 2], 0.5, 0.2, 0.8),
            (&[0.7, 0.7, 0.7], &[3, 5, 7], 0.7, 0.7, 0.7),
            (
                &[-3.0, 0.25, 2.0, 0.5, 0.51],
                &[1000, 1, 7, 300, 42],
                0.3,
                0.0,
                0.99,
            ),
            (&[0.123456789; 1], &[4096], 0.5, 0.3, 0.7),
            (&[], &[], 0.5, 0.0, 0.99),
        ];
        for &(raw, params, target, min, max) in cases {
            let host = project_to_mean(raw, params, target, Bounds { min, max }).unwrap();
            let sdk = autoprune_sdk::project_to_mean(raw, params, target, min, max).unwrap();
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&host), bits(&sdk), "{raw:?} {params:?} {target}");
        }
        let b = Bounds {
            min: 0.0,
            max: 0.99,
        };
        assert!(matches!(
            project_to_mean(&[0.5, 0.5], &[1], 0.5, b),
            Err(AllocError::Request(m)) if m == "2 raw values for 1 units"
        ));
        assert!(autoprune_sdk::project_to_mean(&[0.5, 0.5], &[1], 0.5, 0.0, 0.99).is_err());
        // Out-of-range targets and non-finite values are refused by both.
        assert!(project_to_mean(&[0.5], &[1], 0.995, b).is_err());
        assert!(autoprune_sdk::project_to_mean(&[0.5], &[1], 0.995, 0.0, 0.99).is_err());
        assert!(project_to_mean(&[f64::NAN], &[1], 0.5, b).is_err());
        assert!(autoprune_sdk::project_to_mean(&[f64::NAN], &[1], 0.5, 0.0, 0.99).is_err());
    }
}
