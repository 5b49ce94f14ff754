//! The editable prompt templates: the built-in texts, loading a folder of overrides, checking and
//! filling `{{name}}` placeholders.

use std::collections::HashMap;
use std::path::Path;

/// The template files, by name, with their built-in text.
pub const TEMPLATE_FILES: [(&str, &str); 6] = [
    ("system.md", include_str!("../../../prompts/system.md")),
    ("user.md", include_str!("../../../prompts/user.md")),
    ("op-new.md", include_str!("../../../prompts/op-new.md")),
    (
        "op-mutate.md",
        include_str!("../../../prompts/op-mutate.md"),
    ),
    (
        "op-crossover.md",
        include_str!("../../../prompts/op-crossover.md"),
    ),
    (
        "op-repair.md",
        include_str!("../../../prompts/op-repair.md"),
    ),
];

/// Placeholders each template may use.
fn allowed(file: &str) -> &'static [&'static str] {
    match file {
        "system.md" => &[
            "pattern",
            "sparsity_percent",
            "example_wanda",
            "example_ria",
        ],
        "user.md" => &[
            "task",
            "baselines",
            "best",
            "diverse",
            "lineage",
            "failed_siblings",
            "lessons",
            "parent",
            "in_flight",
            "pattern",
            "sparsity_percent",
        ],
        _ => &["parent_id", "other_id"],
    }
}

/// The prompt templates of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Templates {
    files: HashMap<String, String>,
}

impl Templates {
    /// The built-in templates.
    pub fn builtin() -> Self {
        Templates {
            files: TEMPLATE_FILES
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        }
    }

    /// The built-in templates with every file present in `dir` replacing its namesake. Every
    /// template is checked: an unknown `{{placeholder}}` is an error naming the file.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut t = Self::builtin();
        if let Some(dir) = dir {
            if !dir.is_dir() {
                anyhow::bail!("the prompt folder {} does not exist", dir.display());
            }
            for (name, _) in TEMPLATE_FILES {
                let p = dir.join(name);
                if p.exists() {
                    let text = std::fs::read_to_string(&p)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
                    t.files.insert(name.to_string(), text);
                }
            }
        }
        for (name, _) in TEMPLATE_FILES {
            placeholders(&t.files[name])
                .into_iter()
                .find(|p| !allowed(name).contains(&p.as_str()))
                .map_or(Ok(()), |p| {
                    Err(anyhow::anyhow!(
                        "prompt template {name}: unknown placeholder {{{{{p}}}}} (allowed: {})",
                        allowed(name).join(", ")
                    ))
                })?;
        }
        Ok(t)
    }

    /// Write the built-in templates into `dir` (to edit them and pass `--prompts dir`).
    pub fn write_builtin(dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in TEMPLATE_FILES {
            std::fs::write(dir.join(name), text)?;
        }
        Ok(())
    }

    pub(super) fn get(&self, name: &str) -> &str {
        self.files.get(name).map_or("", |s| s.as_str())
    }
}

/// The `{{name}}` placeholders of a template.
fn placeholders(t: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else { break };
        out.push(after[..j].trim().to_string());
        rest = &after[j + 2..];
    }
    out
}

/// Fill `{{name}}` placeholders (one pass: values are never re-expanded).
pub fn fill(t: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            out.push_str(&rest[i..]);
            return out;
        };
        let name = after[..j].trim();
        match vars.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => out.push_str(v),
            None => out.push_str(&rest[i..i + 2 + j + 2]),
        }
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_reject_unknown_placeholders() {
        assert_eq!(fill("a {{x}} b {{y}}", &[("x", "1".into())]), "a 1 b {{y}}");
        // Values are not expanded again.
        assert_eq!(fill("{{x}}", &[("x", "{{x}}".into())]), "{{x}}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("user.md"), "{{task}} {{bogus}}").unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("user.md") && e.contains("bogus"), "{e}");
        std::fs::write(dir.path().join("user.md"), "only {{task}}").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(t.get("user.md"), "only {{task}}");
        assert_eq!(t.get("system.md"), Templates::builtin().get("system.md"));
    }
}
