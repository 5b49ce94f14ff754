//! What a search optimises: one or more pruning *settings* (sparsity, comparison group,
//! layer-wise allocation), each compared with Wanda under the same setting. The fitness of a
//! candidate is the mean over settings of its paired log-perplexity difference to Wanda, i.e.
//! the log of the geometric mean of its perplexity ratios to Wanda (1.0 = Wanda's quality).

use crate::alloc::{Allocation, OwlParams, SdsaParams};
use crate::prune::mask::Pattern;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One pruning setting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    /// Target sparsity (N:M patterns fix their own).
    pub sparsity: f64,
    /// Comparison group.
    pub pattern: Pattern,
    /// Layer-wise allocation (per block; computed once per run from the dense model).
    pub allocation: Allocation,
}

impl Setting {
    /// `sparsity` uniformly with `pattern`.
    pub fn uniform(sparsity: f64, pattern: Pattern) -> Self {
        Setting {
            sparsity: match pattern {
                Pattern::NM { n, m, .. } => n as f64 / m as f64,
                _ => sparsity,
            },
            pattern,
            allocation: Allocation::Uniform,
        }
    }

    /// Whether every layer gets the target (no allocation).
    pub fn is_uniform(&self) -> bool {
        matches!(self.allocation, Allocation::Uniform)
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pattern {
            Pattern::NM { .. } => write!(f, "{}", self.pattern)?,
            Pattern::PerRow => write!(f, "{}%", fmt_pct(self.sparsity))?,
            Pattern::PerLayer => write!(f, "{}%@layer", fmt_pct(self.sparsity))?,
            Pattern::PerLayerExact => write!(f, "{}%@layer-exact", fmt_pct(self.sparsity))?,
        }
        match self.allocation {
            Allocation::Uniform => Ok(()),
            a => write!(f, "+{}", a.name()),
        }
    }
}

fn fmt_pct(s: f64) -> String {
    let p = s * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{}", p.round() as i64)
    } else {
        format!("{p}")
    }
}

impl FromStr for Setting {
    type Err = String;

    /// `0.5`, `2:4`, `0.7+sdsa`, `0.7+owl`, `0.5@layer` (one threshold per matrix).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (body, alloc) = match s.split_once('+') {
            Some((b, a)) => (b.trim(), Some(a.trim())),
            None => (s, None),
        };
        let (body, group) = match body.split_once('@') {
            Some((b, g)) => (b.trim(), Some(g.trim())),
            None => (body, None),
        };
        let mut setting = if body.contains(':') {
            let pattern: Pattern = body.parse().map_err(|e| format!("`{s}`: {e}"))?;
            Setting::uniform(0.0, pattern)
        } else {
            let sparsity: f64 = body.trim_end_matches('%').parse().map_err(|_| {
                format!("`{s}`: expected a sparsity like 0.5 or a pattern like 2:4")
            })?;
            let sparsity = if body.ends_with('%') {
                sparsity / 100.0
            } else {
                sparsity
            };
            if !(sparsity > 0.0 && sparsity < 1.0) {
                return Err(format!("`{s}`: the sparsity must be in (0, 1)"));
            }
            let pattern = match group {
                None | Some("row") => Pattern::PerRow,
                Some(g) => g.parse().map_err(|e| format!("`{s}`: {e}"))?,
            };
            Setting::uniform(sparsity, pattern)
        };
        setting.allocation = match alloc {
            None | Some("uniform") => Allocation::Uniform,
            Some("sdsa") => Allocation::Sdsa(SdsaParams::default()),
            Some("owl") => Allocation::Owl(OwlParams::default()),
            Some(other) => {
                return Err(format!(
                    "`{s}`: unknown allocation `{other}` (uniform, owl or sdsa)"
                ))
            }
        };
        if !setting.is_uniform() && matches!(setting.pattern, Pattern::NM { .. }) {
            return Err(format!(
                "`{s}`: N:M patterns fix every layer's sparsity; an allocation needs a sparsity"
            ));
        }
        Ok(setting)
    }
}

/// The settings a search optimises together (at least one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// The settings, in the order given.
    pub settings: Vec<Setting>,
}

impl Objective {
    /// A single setting.
    pub fn single(s: Setting) -> Self {
        Objective { settings: vec![s] }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.settings.iter().map(|s| s.to_string()).collect();
        write!(f, "{}", parts.join(","))
    }
}

impl FromStr for Objective {
    type Err = String;

    /// Comma-separated settings, e.g. `2:4` or `0.5,2:4,0.7+sdsa`.
    fn from_str(s: &str) -> Result<Self, String> {
        let settings = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Setting::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if settings.is_empty() {
            return Err("an objective needs at least one setting".into());
        }
        Ok(Objective { settings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for (text, shown) in [
            ("0.5", "50%"),
            ("2:4", "2:4"),
            ("0.7+sdsa", "70%+sdsa"),
            ("70%+owl", "70%+owl"),
            ("0.5@layer", "50%@layer"),
            ("0.5,2:4,0.7+sdsa", "50%,2:4,70%+sdsa"),
        ] {
            let o: Objective = text.parse().unwrap();
            assert_eq!(o.to_string(), shown);
            assert_eq!(o.to_string().parse::<Objective>().unwrap(), o);
        }
        let s: Setting = "2:4".parse().unwrap();
        assert_eq!(s.sparsity, 0.5);
        assert_eq!(s.pattern, Pattern::n_m(2, 4));
    }

    #[test]
    fn bad_settings_are_named() {
        for bad in ["", "1.5", "0", "2:4+sdsa", "0.5+magic", "half"] {
            assert!(bad.parse::<Objective>().is_err(), "{bad}");
        }
    }
}
