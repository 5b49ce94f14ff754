//! When to retry: exponential backoff with deterministic jitter, and the server's `Retry-After`
//! (seconds or an HTTP date).

use super::*;

/// Backoff before retry `attempt` (0-based): `base · 2^attempt`, capped, ±25 % jitter derived
/// from `seed` and `attempt`.
pub(super) fn backoff(cfg: &LlmConfig, attempt: u32, seed: u64) -> f64 {
    let raw = (cfg.backoff_base_s * 2f64.powi(attempt.min(30) as i32)).min(cfg.backoff_max_s);
    let mut z = seed ^ (attempt as u64 + 1).wrapping_mul(crate::rng::GOLDEN);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    (raw * (0.75 + 0.5 * unit)).max(0.0)
}

/// `Retry-After`: delta-seconds, or an HTTP date (IMF-fixdate) converted to seconds from now.
pub fn parse_retry_after(v: &str) -> Option<f64> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then_some(s);
    }
    let at = parse_http_date(v)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some((at - now).max(0.0))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → Unix seconds.
fn parse_http_date(v: &str) -> Option<f64> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as i64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3
        || !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || !(0..24).contains(&hms[0])
        || !(0..60).contains(&hms[1])
        || !(0..=60).contains(&hms[2])
    {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(3.0));
        assert_eq!(parse_retry_after(" 0.5 "), Some(0.5));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_http_date("Sun, 06 Nov 99999999999999 08:49:37 GMT"),
            None
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 99999999999:49:37 GMT"),
            None
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777.0)
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(0.0)
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let cfg = LlmConfig {
            backoff_base_s: 1.0,
            backoff_max_s: 5.0,
            ..LlmConfig::default()
        };
        for (a, raw) in [(0u32, 1.0f64), (1, 2.0), (2, 4.0), (3, 5.0), (10, 5.0)] {
            let b = backoff(&cfg, a, 7);
            assert!(b >= 0.75 * raw && b <= 1.25 * raw, "{a}: {b}");
            assert_eq!(b, backoff(&cfg, a, 7));
        }
    }
}
