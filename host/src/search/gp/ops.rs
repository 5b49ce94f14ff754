// ---- autoprune GP arithmetic (shared) --------------------------------------------------------
// The elementwise and whole-layer arithmetic of symbolic GP metrics. The host compiles this file
// into `autoprune::search::gp` (for `eval_native`) and `render` pastes it verbatim into every
// candidate, so host and guest compute bit-identical scores. It uses only IEEE basic operations
// (+ − × ÷ sqrt, min/max, floor), which wasm32 and x86-64 round identically; `exp`, `ln` and
// `tanh` are computed here in f64 instead of calling the platform's libm. Every result is clamped
// to [−BOUND, BOUND] so no tree can produce NaN or ±inf.

/// Bound of every intermediate value: results are clamped to `[-BOUND, BOUND]`.
pub const BOUND: f32 = 1e30;
/// The `ε` of the safe division `a / (|b| + ε)`.
pub const DIV_EPS: f32 = 1e-8;
/// The `ε` of the safe logarithm `ln(|a| + ε)`.
pub const LOG_EPS: f64 = 1e-3;
/// Largest argument of `exp`: `exp(min(a, EXP_MAX))`.
pub const EXP_MAX: f32 = 30.0;

/// Clamp to `[-BOUND, BOUND]`; NaN becomes `-BOUND` (two compare-selects, cheaper in wasm than
/// `f32::max`/`min`, whose NaN rules wasm's `f32.max` does not share).
#[inline]
pub fn fin(v: f32) -> f32 {
    let v = if v > -BOUND { v } else { -BOUND };
    if v < BOUND {
        v
    } else {
        BOUND
    }
}

/// `e^x` in f64 (range reduction by ln 2, Taylor polynomial of degree 9 on `|r| <= ln2/2`:
/// relative error below 1e-10, far inside f32 rounding); 0 below −745.
#[inline]
pub fn exp64(x: f64) -> f64 {
    const LN2: f64 = std::f64::consts::LN_2;
    const INV_LN2: f64 = 1.0 / std::f64::consts::LN_2;
    if x.is_nan() || x < -745.0 {
        return 0.0;
    }
    let x = if x < 700.0 { x } else { 700.0 };
    let k = (x * INV_LN2 + 0.5).floor();
    let r = x - k * LN2;
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0
                            + r * (1.0 / 720.0
                                + r * (1.0 / 5040.0
                                    + r * (1.0 / 40320.0 + r * (1.0 / 362880.0)))))))));
    // 2^k from exponent bits (k is in -1075..=1010 here; below -1022 in two steps).
    let k = k as i64;
    if k < -1022 {
        return p * f64::from_bits(1u64 << 52) * f64::from_bits(((k + 1022 + 1023) as u64) << 52);
    }
    p * f64::from_bits(((k + 1023) as u64) << 52)
}

/// `exp(min(a, 30))`.
#[inline]
pub fn exp(a: f32) -> f32 {
    fin(exp64(a.min(EXP_MAX) as f64) as f32)
}

/// `ln(|a| + 1e-3)` (in f64: exponent bits plus an atanh series on the mantissa).
#[inline]
pub fn log(a: f32) -> f32 {
    const SQRT2: f64 = std::f64::consts::SQRT_2;
    let y = (a.abs() as f64).min(1e38) + LOG_EPS;
    let bits = y.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > SQRT2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2·atanh(s) = 2(s + s³/3 + … + s⁹/9), |s| <= 0.172: error below 1e-9.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let p = 1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0))));
    fin((e as f64 * std::f64::consts::LN_2 + 2.0 * s * p) as f32)
}

/// `tanh(a)`, from [`exp64`].
#[inline]
pub fn tanh(a: f32) -> f32 {
    let x = a.abs() as f64;
    let t = if x.is_nan() {
        0.0
    } else if x < 1e-5 {
        x
    } else if x < 20.0 {
        let e = exp64(2.0 * x);
        (e - 1.0) / (e + 1.0)
    } else {
        1.0
    };
    if a < 0.0 {
        -(t as f32)
    } else {
        t as f32
    }
}

/// `a²`.
#[inline]
pub fn sqr(a: f32) -> f32 {
    fin(a * a)
}

/// `−a`.
#[inline]
pub fn neg(a: f32) -> f32 {
    fin(-a)
}

/// `|a|`.
#[inline]
pub fn abs(a: f32) -> f32 {
    fin(a.abs())
}

/// `sqrt(|a|)`.
#[inline]
pub fn sqrt(a: f32) -> f32 {
    fin(a.abs().sqrt())
}

/// `a + b`.
#[inline]
pub fn add(a: f32, b: f32) -> f32 {
    fin(a + b)
}

/// `a − b`.
#[inline]
pub fn sub(a: f32, b: f32) -> f32 {
    fin(a - b)
}

/// `a · b`.
#[inline]
pub fn mul(a: f32, b: f32) -> f32 {
    fin(a * b)
}

/// Safe division `a / (|b| + 1e-8)`.
#[inline]
pub fn div(a: f32, b: f32) -> f32 {
    fin(a / (b.abs() + DIV_EPS))
}

/// `a · s` (a row or column normalisation by an inverse sum `s`).
#[inline]
pub fn scale(a: f32, s: f32) -> f32 {
    fin(a * s)
}

/// `1 / s` for a positive normal sum, else 0 (an all-zero row or column normalises to 0).
#[inline]
pub fn inverse(s: f32) -> f32 {
    if s >= f32::MIN_POSITIVE && s.is_finite() {
        1.0 / s
    } else {
        0.0
    }
}

/// `1 / Σ|v|` of one row (0 for an all-zero row).
#[inline]
pub fn row_inverse(v: &[f32]) -> f32 {
    inverse(v.iter().map(|x| x.abs()).sum())
}

/// Add `|v|` into running column sums.
#[inline]
pub fn col_add(sums: &mut [f32], v: &[f32]) {
    for (s, x) in sums.iter_mut().zip(v) {
        *s += x.abs();
    }
}

/// `inverse` of every column sum.
pub fn col_inverses(sums: &[f32]) -> Vec<f32> {
    sums.iter().map(|&s| inverse(s)).collect()
}

/// Running minimum and maximum of a whole layer (for `mms`).
#[derive(Debug, Clone, Copy)]
pub struct MinMax {
    lo: f32,
    hi: f32,
}

impl MinMax {
    /// Nothing seen yet.
    pub fn new() -> Self {
        MinMax {
            lo: f32::INFINITY,
            hi: f32::NEG_INFINITY,
        }
    }

    /// Take in one row.
    #[inline]
    pub fn add(&mut self, v: &[f32]) {
        for &x in v {
            self.lo = self.lo.min(x);
            self.hi = self.hi.max(x);
        }
    }

    /// `(shift, 1 / range)`, or `(0, 0)` when the range is empty or zero (then `mms` is 1).
    pub fn finish(&self) -> (f32, f32) {
        let range = self.hi - self.lo;
        if range >= f32::MIN_POSITIVE && range.is_finite() {
            (self.lo, 1.0 / range)
        } else {
            (0.0, 0.0)
        }
    }
}

impl Default for MinMax {
    fn default() -> Self {
        Self::new()
    }
}

/// `(a − min) / (max − min)` over the whole layer; 1 when the layer is constant.
#[inline]
pub fn mms(a: f32, p: (f32, f32)) -> f32 {
    if p.1 > 0.0 {
        fin((a - p.0) * p.1)
    } else {
        1.0
    }
}

/// Running mean and variance of a whole layer in f64, in row order (Welford; for `zsn`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Moments::default()
    }

    /// Take in one row.
    #[inline]
    pub fn add(&mut self, v: &[f32]) {
        for &x in v {
            let x = x as f64;
            self.n += 1.0;
            let d = x - self.mean;
            self.mean += d / self.n;
            self.m2 += d * (x - self.mean);
        }
    }

    /// `(mean, 1 / std)` (population std), or `(mean, 0)` for a constant or empty layer.
    pub fn finish(&self) -> (f64, f64) {
        let var = if self.n > 0.0 { self.m2 / self.n } else { 0.0 };
        if var > 0.0 && var.is_finite() {
            (self.mean, 1.0 / var.sqrt())
        } else {
            (self.mean, 0.0)
        }
    }
}

/// `(a − mean) / std` over the whole layer; 0 when the layer is constant.
#[inline]
pub fn zsn(a: f32, p: (f64, f64)) -> f32 {
    fin(((a as f64 - p.0) * p.1) as f32)
}
// ---- end of the shared GP arithmetic ---------------------------------------------------------
