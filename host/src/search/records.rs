//! The typed vocabulary of the search's records. Each type is written to the archive, to
//! `runs show --json` and to the HTML report as exactly the text the search has always written,
//! and reads any text back: a name this version does not know (an older archive's) is kept
//! verbatim, so every archive still loads and is written back unchanged.

use super::llm::CallVerdict;
use crate::sandbox::Failure;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// A name in records: read from any text (`From<&str>`), written as its name (`$name`) by
/// `Display` (padding honoured) and serde, as the plain strings of earlier versions were.
macro_rules! recorded_name {
    ($t:ty, $name:ident) => {
        impl From<String> for $t {
            fn from(s: String) -> Self {
                <$t>::from(s.as_str())
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.$name())
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.$name())
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(<$t>::from)
            }
        }
    };
}

/// The ladder level a node reached, or failed at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The proposal itself (a response with no usable code, an endpoint that gave up).
    Propose,
    /// The sandboxed build and load.
    Build,
    /// The validation suite on small synthetic layers.
    Check,
    /// The masks on the probe layers of the real model.
    Probe,
    /// The one-shot screen.
    Screen,
    /// The sequential protocol on every validation window.
    Sequential,
    /// The host panicked while evaluating the node.
    Host,
    /// A name this version does not know, kept verbatim (e.g. `proxy` and `full` of
    /// version-1 archives; empty when no stage was set).
    Other(String),
}

impl Stage {
    /// The name in records.
    pub fn as_str(&self) -> &str {
        match self {
            Stage::Propose => "propose",
            Stage::Build => "build",
            Stage::Check => "check",
            Stage::Probe => "probe",
            Stage::Screen => "screen",
            Stage::Sequential => "sequential",
            Stage::Host => "host",
            Stage::Other(s) => s,
        }
    }
}

/// The empty name: what an outcome holds before its evaluation sets a stage.
impl Default for Stage {
    fn default() -> Self {
        Stage::Other(String::new())
    }
}

impl From<&str> for Stage {
    fn from(s: &str) -> Self {
        match s {
            "propose" => Stage::Propose,
            "build" => Stage::Build,
            "check" => Stage::Check,
            "probe" => Stage::Probe,
            "screen" => Stage::Screen,
            "sequential" => Stage::Sequential,
            "host" => Stage::Host,
            other => Stage::Other(other.to_string()),
        }
    }
}

recorded_name!(Stage, as_str);

/// How a candidate was derived.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operator {
    /// A baseline the run starts from (seeds climb every level whatever their screen, and do
    /// not count towards the candidate budget).
    Seed,
    /// A new candidate (GP: a random tree; LLM: a new idea).
    New,
    /// A change of one parent.
    Mutate,
    /// A mix of two parents.
    Crossover,
    /// GP: one parent with a constant scaled or a sum reweighted.
    Tune,
    /// LLM: a fix of a parent that failed.
    Repair,
    /// A name this version does not know, kept verbatim (empty when none was set).
    Other(String),
}

impl Operator {
    /// The name in records.
    pub fn as_str(&self) -> &str {
        match self {
            Operator::Seed => "seed",
            Operator::New => "new",
            Operator::Mutate => "mutate",
            Operator::Crossover => "crossover",
            Operator::Tune => "tune",
            Operator::Repair => "repair",
            Operator::Other(s) => s,
        }
    }

    /// Whether the node is one of the run's seeds (baselines).
    pub fn is_seed(&self) -> bool {
        *self == Operator::Seed
    }
}

/// The empty name, as a record's operator was before one was set.
impl Default for Operator {
    fn default() -> Self {
        Operator::Other(String::new())
    }
}

impl From<&str> for Operator {
    fn from(s: &str) -> Self {
        match s {
            "seed" => Operator::Seed,
            "new" => Operator::New,
            "mutate" => Operator::Mutate,
            "crossover" => Operator::Crossover,
            "tune" => Operator::Tune,
            "repair" => Operator::Repair,
            other => Operator::Other(other.to_string()),
        }
    }
}

recorded_name!(Operator, as_str);

/// Which proposer made a candidate (and the calls behind it): `seed`, `gp`, `random`,
/// `llm:<model>`. Build it from the name ([`ProposerName::from`]) so that equal names are equal
/// values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProposerName {
    /// The run's seeds (baselines).
    Seed,
    /// Symbolic GP.
    Gp,
    /// Random GP trees.
    Random,
    /// An LLM (the model's name).
    Llm(String),
    /// A name this version does not know, kept verbatim (a test proposer's; empty when none
    /// was set).
    Other(String),
}

impl ProposerName {
    /// The name in records.
    pub fn name(&self) -> Cow<'_, str> {
        match self {
            ProposerName::Seed => "seed".into(),
            ProposerName::Gp => "gp".into(),
            ProposerName::Random => "random".into(),
            ProposerName::Llm(model) => format!("llm:{model}").into(),
            ProposerName::Other(s) => s.as_str().into(),
        }
    }

    /// Whether these are the run's seeds.
    pub fn is_seed(&self) -> bool {
        *self == ProposerName::Seed
    }
}

/// The empty name, as a record's proposer was before one was set.
impl Default for ProposerName {
    fn default() -> Self {
        ProposerName::Other(String::new())
    }
}

impl From<&str> for ProposerName {
    fn from(s: &str) -> Self {
        match s {
            "seed" => ProposerName::Seed,
            "gp" => ProposerName::Gp,
            "random" => ProposerName::Random,
            other => match other.strip_prefix("llm:") {
                Some(model) => ProposerName::Llm(model.to_string()),
                None => ProposerName::Other(other.to_string()),
            },
        }
    }
}

recorded_name!(ProposerName, name);

impl PartialEq<str> for ProposerName {
    fn eq(&self, other: &str) -> bool {
        self.name() == other
    }
}

impl PartialEq<&str> for ProposerName {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// Why a node failed: the typed verdict recorded with it. The archive stores it as JSON
/// ([`Verdict::to_json`]), exactly as the search always has; [`Verdict::from_json`] reads that
/// text back.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The candidate failed a ladder level: the sandbox's verdict.
    Guest(Failure),
    /// The proposal produced no usable candidate (stage `propose`): the endpoint's or the
    /// answer parser's verdict.
    Call(CallVerdict),
    /// The host panicked while evaluating the node (stage `host`).
    HostPanic {
        /// The panic message.
        message: String,
    },
    /// JSON this version does not read as one of the above (an older archive's, a test
    /// proposer's), kept verbatim.
    Other(String),
}

impl Verdict {
    /// The JSON the archive stores.
    pub fn to_json(&self) -> String {
        match self {
            Verdict::Guest(f) => {
                serde_json::to_string(f).unwrap_or_else(|_| format!("{{\"verdict\":\"{f}\"}}"))
            }
            Verdict::Call(c) => c.to_json(),
            // The keys in the order `serde_json::json!` writes them (sorted).
            Verdict::HostPanic { message } => {
                serde_json::json!({"verdict": "host_panic", "message": message}).to_string()
            }
            Verdict::Other(s) => s.clone(),
        }
    }

    /// Read a stored verdict. A text is typed only when writing the typed value gives back the
    /// very same text (so a record is written back unchanged); anything else is
    /// [`Verdict::Other`].
    pub fn from_json(text: &str) -> Verdict {
        let exact = |v: Verdict| (v.to_json() == text).then_some(v);
        serde_json::from_str::<Failure>(text)
            .ok()
            .and_then(|f| exact(Verdict::Guest(f)))
            .or_else(|| {
                serde_json::from_str::<CallVerdict>(text)
                    .ok()
                    .and_then(|c| exact(Verdict::Call(c)))
            })
            .or_else(|| {
                let v: serde_json::Value = serde_json::from_str(text).ok()?;
                let o = v.as_object().filter(|o| o.len() == 2)?;
                (o.get("verdict")?.as_str()? == "host_panic").then_some(())?;
                let message = o.get("message")?.as_str()?.to_string();
                exact(Verdict::HostPanic { message })
            })
            .unwrap_or_else(|| Verdict::Other(text.to_string()))
    }

    /// The verdict's kind, as its JSON names it (`compile`, `timeout`, `no_code`, …; empty
    /// when an unknown text names none).
    pub fn kind(&self) -> String {
        match self {
            Verdict::Guest(f) => f.kind().into(),
            Verdict::Call(c) => c.kind().into(),
            Verdict::HostPanic { .. } => "host_panic".into(),
            Verdict::Other(s) => serde_json::from_str::<serde_json::Value>(s)
                .ok()
                .and_then(|v| v.get("verdict")?.as_str().map(str::to_string))
                .unwrap_or_default(),
        }
    }
}

impl From<Failure> for Verdict {
    fn from(f: Failure) -> Self {
        Verdict::Guest(f)
    }
}

impl From<CallVerdict> for Verdict {
    fn from(c: CallVerdict) -> Self {
        Verdict::Call(c)
    }
}

/// As the JSON text (a string), the way records always carried it.
impl Serialize for Verdict {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_json())
    }
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Verdict::from_json(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_read_and_write_the_recorded_names() {
        for name in [
            "propose",
            "build",
            "check",
            "probe",
            "screen",
            "sequential",
            "host",
            "full",
            "proxy",
            "",
        ] {
            let s = Stage::from(name);
            assert_eq!(s.as_str(), name);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{name}\""));
            let back: Stage = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, s);
        }
        assert_eq!(Stage::from("screen"), Stage::Screen);
        assert_eq!(Stage::from("full"), Stage::Other("full".into()));
        assert_eq!(format!("[{:<7}]", Stage::Probe), "[probe  ]");
        assert_eq!(Stage::default().as_str(), "");
    }

    #[test]
    fn verdicts_read_back_typed_and_write_back_the_same_text() {
        use crate::sandbox::{GuestError, InvalidOutput};
        let typed = [
            Verdict::Guest(Failure::Compile {
                diagnostics: "error[E0308]: \"mismatched\" types\n".into(),
            }),
            Verdict::Guest(Failure::Timeout { limit_ms: 5000 }),
            Verdict::Guest(Failure::StackOverflow),
            Verdict::Guest(Failure::InvalidOutput(InvalidOutput::NonFinite {
                row: 1,
                col: 2,
                value: "NaN".into(),
            })),
            Verdict::Guest(Failure::GuestError(GuestError {
                kind: "failed".into(),
                message: "no".into(),
            })),
            Verdict::Call(CallVerdict::Timeout { seconds: 1.5 }),
            Verdict::Call(CallVerdict::NoCode { truncated: true }),
            Verdict::Call(CallVerdict::HttpStatus {
                status: 503,
                excerpt: "busy".into(),
            }),
            Verdict::HostPanic {
                message: "index out of bounds".into(),
            },
        ];
        for v in typed {
            let text = v.to_json();
            assert_eq!(Verdict::from_json(&text), v, "{text}");
        }
        // The texts as the search wrote them.
        assert_eq!(
            Verdict::from_json(r#"{"verdict":"out_of_fuel","limit":100}"#),
            Verdict::Guest(Failure::OutOfFuel { limit: 100 })
        );
        assert_eq!(
            Verdict::from_json(r#"{"verdict":"timeout","seconds":2.0}"#),
            Verdict::Call(CallVerdict::Timeout { seconds: 2.0 })
        );
        assert_eq!(
            Verdict::from_json(r#"{"message":"boom","verdict":"host_panic"}"#),
            Verdict::HostPanic {
                message: "boom".into()
            }
        );
        // Anything that would not be written back byte for byte stays text: unknown kinds,
        // missing or extra fields, another spelling of a number, other key orders.
        for text in [
            r#"{"verdict":"too_large","limit":8}"#,
            r#"{"verdict":"compile"}"#,
            r#"{"verdict":"out_of_fuel","limit":100,"extra":1}"#,
            r#"{"verdict":"timeout","seconds":1}"#,
            r#"{"limit":100,"verdict":"out_of_fuel"}"#,
            r#"{"verdict":"host_panic","message":"boom"}"#,
            "not json",
        ] {
            let v = Verdict::from_json(text);
            assert_eq!(v, Verdict::Other(text.into()));
            assert_eq!(v.to_json(), text);
        }
        assert_eq!(
            Verdict::from_json(r#"{"verdict":"too_large"}"#).kind(),
            "too_large"
        );
        assert_eq!(Verdict::from_json("not json").kind(), "");
        // In a record's JSON (`runs show --json`): the verdict's text as a string.
        let v = Verdict::Call(CallVerdict::NoCode { truncated: false });
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(s, serde_json::to_string(&v.to_json()).unwrap());
        assert_eq!(serde_json::from_str::<Verdict>(&s).unwrap(), v);
    }

    #[test]
    fn operators_and_proposers_read_and_write_the_recorded_names() {
        for name in [
            "seed",
            "new",
            "mutate",
            "crossover",
            "tune",
            "repair",
            "splice",
            "",
        ] {
            let o = Operator::from(name);
            assert_eq!((o.as_str(), o.to_string()), (name, name.to_string()));
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<Operator>(&format!("\"{name}\"")).unwrap(),
                o
            );
        }
        assert!(Operator::from("seed").is_seed() && !Operator::from("new").is_seed());
        assert_eq!(Operator::from("splice"), Operator::Other("splice".into()));
        assert_eq!(format!("{:<9}|", Operator::Mutate), "mutate   |");
        for name in [
            "seed",
            "gp",
            "random",
            "llm:SmolLM2-135M",
            "llm:",
            "test",
            "",
        ] {
            let p = ProposerName::from(name);
            assert_eq!((p.name(), p.to_string()), (name.into(), name.to_string()));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<ProposerName>(&format!("\"{name}\"")).unwrap(),
                p
            );
            assert_eq!(p, name);
        }
        assert_eq!(ProposerName::from("llm:m"), ProposerName::Llm("m".into()));
        assert!(ProposerName::from("seed").is_seed());
        assert_eq!(Operator::default().as_str(), "");
        assert_eq!(ProposerName::default().name(), "");
    }
}
