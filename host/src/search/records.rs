//! The typed vocabulary of the search's records. Each type is written to the archive, to
//! `runs show --json` and to the HTML report as exactly the text the search has always written,
//! and reads any text back: a name this version does not know (an older archive's) is kept
//! verbatim, so every archive still loads and is written back unchanged.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

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

impl From<String> for Stage {
    fn from(s: String) -> Self {
        Stage::from(s.as_str())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for Stage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Stage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Stage::from)
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
}
