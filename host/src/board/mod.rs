//! The leaderboard service: third parties submit metric plugins over an authenticated HTTP
//! API ([`api`]), a durable SQLite queue ([`store`]) hands evaluation jobs to workers on any
//! machine under leases ([`worker`]), and a server-rendered page ranks the results against
//! built-in baselines measured by the same workers ([`page`]).
//!
//! Trust model: submitters are strangers (their code is built and run only by workers, inside
//! the compile sandbox and wasmtime; every string they send is escaped on the page and on the
//! terminal). Workers hold a worker token and are trusted to run the board's protocol on their
//! own copy of the model and texts: the server never sends the evaluation text, only the job
//! (one plugin and one setting), and pins the protocol's fingerprint from the first result.

pub mod api;
pub mod bench;
pub mod page;
pub mod slurm;
pub mod store;
pub mod worker;

use crate::alloc::{Allocation, OwlParams, SdsaParams};
use crate::prune::mask::Pattern;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One setting the board ranks under: a target sparsity, a comparison group and a layer-wise
/// allocation. Written as `50%`, `2:4`, `70%+sdsa` or `70%+owl`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Setting {
    /// Target sparsity.
    pub sparsity: f64,
    /// Comparison group.
    pub pattern: Pattern,
    /// Layer-wise allocation.
    pub allocation: AllocationName,
}

/// The built-in layer-wise allocations a board setting may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocationName {
    /// Every layer at the target.
    Uniform,
    /// OWL with its defaults.
    Owl,
    /// SDSA with its defaults.
    Sdsa,
}

impl AllocationName {
    /// The allocation rule with its default parameters.
    pub fn rule(self) -> Allocation {
        match self {
            AllocationName::Uniform => Allocation::Uniform,
            AllocationName::Owl => Allocation::Owl(OwlParams::default()),
            AllocationName::Sdsa => Allocation::Sdsa(SdsaParams::default()),
        }
    }
}

/// Why a setting string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown setting `{0}`: expected e.g. `50%`, `2:4`, `70%+sdsa` or `70%+owl`")]
pub struct ParseSettingError(pub String);

impl FromStr for Setting {
    type Err = ParseSettingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseSettingError(crate::term::line(s).chars().take(64).collect());
        let t = s.trim().to_ascii_lowercase();
        let (head, allocation) = match t.split_once('+') {
            None => (t.as_str(), AllocationName::Uniform),
            Some((h, "sdsa")) => (h, AllocationName::Sdsa),
            Some((h, "owl")) => (h, AllocationName::Owl),
            Some(_) => return Err(bad()),
        };
        if let Some(pct) = head.strip_suffix('%') {
            let p: u32 = pct.parse().map_err(|_| bad())?;
            if !(1..=99).contains(&p) {
                return Err(bad());
            }
            return Ok(Setting {
                sparsity: f64::from(p) / 100.0,
                pattern: Pattern::PerRow,
                allocation,
            });
        }
        match head.parse::<Pattern>() {
            Ok(
                pattern @ Pattern::NM {
                    n,
                    m,
                    permute: false,
                },
            ) if allocation == AllocationName::Uniform => Ok(Setting {
                sparsity: n as f64 / m as f64,
                pattern,
                allocation,
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pattern {
            Pattern::NM { .. } => write!(f, "{}", self.pattern),
            _ => {
                write!(f, "{}%", (self.sparsity * 100.0).round() as u32)?;
                match self.allocation {
                    AllocationName::Uniform => Ok(()),
                    AllocationName::Owl => f.write_str("+owl"),
                    AllocationName::Sdsa => f.write_str("+sdsa"),
                }
            }
        }
    }
}

impl TryFrom<String> for Setting {
    type Error = ParseSettingError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Setting> for String {
    fn from(s: Setting) -> String {
        s.to_string()
    }
}

/// The evaluation protocol of a board: what every worker runs for every job. The model and
/// the texts are the worker's own copy of the SOTU-512 data (the default model, calibration on
/// speeches before 1990, evaluation on those from 1990 on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProtocol {
    /// Tokens per window.
    pub seq_len: usize,
    /// Calibration windows.
    pub calib_windows: usize,
    /// Evaluation windows (the held-out text).
    pub eval_windows: usize,
}

impl Default for BoardProtocol {
    /// SOTU-512.
    fn default() -> Self {
        BoardProtocol {
            seq_len: 512,
            calib_windows: 32,
            eval_windows: 64,
        }
    }
}

/// A built-in baseline the board measures with its own workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// |W|.
    Magnitude,
    /// |W|·‖X‖₂.
    Wanda,
    /// Relative importance and activations.
    Ria,
    /// SparseGPT (weight updates; a built-in method, not a plugin).
    Sparsegpt,
}

impl Baseline {
    /// Every baseline.
    pub const ALL: [Baseline; 4] = [
        Baseline::Magnitude,
        Baseline::Wanda,
        Baseline::Ria,
        Baseline::Sparsegpt,
    ];

    /// Its name on the board.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Magnitude => "magnitude",
            Baseline::Wanda => "wanda",
            Baseline::Ria => "ria",
            Baseline::Sparsegpt => "sparsegpt",
        }
    }

    /// The plugin source (`None` for SparseGPT, a built-in method).
    pub fn source(self) -> Option<&'static str> {
        match self {
            Baseline::Magnitude => Some(include_str!("../../../candidates/magnitude.rs")),
            Baseline::Wanda => Some(include_str!("../../../candidates/wanda.rs")),
            Baseline::Ria => Some(include_str!("../../../candidates/ria.rs")),
            Baseline::Sparsegpt => None,
        }
    }
}

impl FromStr for Baseline {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Baseline::ALL
            .into_iter()
            .find(|b| b.name() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown baseline `{}` (magnitude, wanda, ria, sparsegpt)",
                    crate::term::line(s)
                )
            })
    }
}

/// A board's fixed configuration, written when its database is created and read back by every
/// later `serve` (a different one is refused: results under two protocols do not rank).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardConfig {
    /// The settings a submission may ask for (the default: all of them).
    pub settings: Vec<Setting>,
    /// The evaluation protocol.
    pub protocol: BoardProtocol,
    /// The baselines measured under every setting.
    pub baselines: Vec<Baseline>,
}

impl Default for BoardConfig {
    fn default() -> Self {
        BoardConfig {
            settings: ["50%", "2:4", "70%+sdsa"]
                .iter()
                .map(|s| s.parse().expect("valid built-in setting"))
                .collect(),
            protocol: BoardProtocol::default(),
            baselines: Baseline::ALL.to_vec(),
        }
    }
}

/// Limits the server enforces (flags of `serve`, not part of the board's identity).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest `.rs` source accepted, bytes.
    pub max_source_bytes: usize,
    /// Largest `.wasm` component accepted, bytes.
    pub max_component_bytes: usize,
    /// Submissions per submitter per rolling hour (durable: counted in the database).
    pub submissions_per_hour: u32,
    /// Shortest interval between two submissions of one submitter, seconds.
    pub min_interval_secs: f64,
    /// Jobs of one submitter queued or running at once.
    pub max_pending_jobs: u32,
    /// Seconds a worker holds a job without renewing it.
    pub lease_secs: f64,
    /// Times a job is handed out before it is failed as abandoned.
    pub max_attempts: u32,
    /// Wall-clock limit of one request, seconds.
    pub request_secs: f64,
    /// Seconds a connection may take to send a request's headers.
    pub header_secs: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_source_bytes: crate::build::BuildOptions::default().max_source_bytes,
            max_component_bytes: 8 << 20,
            submissions_per_hour: 30,
            min_interval_secs: 2.0,
            max_pending_jobs: 12,
            lease_secs: 120.0,
            max_attempts: 3,
            request_secs: 30.0,
            header_secs: 10.0,
        }
    }
}

/// Which tokens a caller holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submits plugins and reads its own submissions.
    Submitter,
    /// Leases and evaluates jobs.
    Worker,
    /// A search run that sends its candidates' evaluations to the board's workers.
    Search,
}

impl Role {
    /// Its name in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submitter => "submitter",
            Role::Worker => "worker",
            Role::Search => "search",
        }
    }
}

/// A fresh bearer token: `ap_` and 32 random bytes in hex. Only [`token_hash`] of it is
/// stored.
pub fn new_token() -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    Ok(format!("ap_{}", hex::encode(b)))
}

/// What the database stores of a token: its SHA-256 (a token has 256 random bits, so a fast
/// hash is enough; there is nothing to brute-force).
pub fn token_hash(token: &str) -> String {
    crate::hash::sha256_hex(token.as_bytes())
}

/// Seconds since the Unix epoch (the archive's clock).
pub use crate::search::archive::now;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_print_back() {
        for s in ["50%", "2:4", "70%+sdsa", "60%+owl", "4:8"] {
            let p: Setting = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        let s: Setting = "2:4".parse().unwrap();
        assert_eq!(s.sparsity, 0.5);
        assert_eq!(s.pattern, Pattern::n_m(2, 4));
        let s: Setting = " 70%+SDSA ".parse().unwrap();
        assert_eq!(s.allocation, AllocationName::Sdsa);
        assert!((s.sparsity - 0.7).abs() < 1e-12);
        for bad in [
            "",
            "0%",
            "100%",
            "50",
            "2:4+sdsa",
            "50%+x",
            "abc%",
            "5:4",
            "\u{1b}[31m",
        ] {
            assert!(bad.parse::<Setting>().is_err(), "{bad:?}");
        }
        let e = "\u{1b}[2J".parse::<Setting>().unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e:?}");
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("ap_") && a.len() == 67);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert!(!token_hash(&a).contains(&a[3..]));
    }

    #[test]
    fn the_default_board_has_every_baseline_and_the_three_settings() {
        let c = BoardConfig::default();
        let names: Vec<String> = c.settings.iter().map(|s| s.to_string()).collect();
        assert_eq!(names, ["50%", "2:4", "70%+sdsa"]);
        assert_eq!(c.baselines.len(), 4);
        assert!(Baseline::Wanda.source().unwrap().contains("impl Metric"));
        assert!(Baseline::Sparsegpt.source().is_none());
    }
}
