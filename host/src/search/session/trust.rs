//! Trust never comes from a file: on `--resume`, the settings that decide what is compiled
//! outside the sandbox, which files the host opens and where the API key goes are not taken
//! from `archive.sqlite` (whoever can edit an archive could otherwise turn the sandbox off or
//! send the key of any variable to any host). They must be given again on the command line,
//! equal to the recorded ones; a difference is refused before anything runs.

use super::{RunConfig, SearchFlags};

/// `Some(text)` for a set flag or a given value, `None` for an absent one.
fn flag(set: bool) -> Option<String> {
    set.then(String::new)
}

fn path(p: Option<&std::path::PathBuf>) -> Option<String> {
    p.map(|p| p.display().to_string())
}

/// Refuse to resume unless every security-relevant setting of `recorded` is given again in
/// `flags`, with the same value (and none that the run did not have).
pub(super) fn check_resume(recorded: &RunConfig, args: &SearchFlags) -> anyhow::Result<()> {
    let llm = recorded.llm.as_ref();
    let settings: [(&str, Option<String>, Option<String>); 7] = [
        ("--trusted", flag(recorded.trusted), flag(args.trusted)),
        ("--llm", llm.map(|l| l.base_url.clone()), args.llm.clone()),
        (
            "--api-key-env",
            llm.and_then(|l| l.api_key_env.clone()),
            args.api_key_env.clone(),
        ),
        (
            "--allow-insecure-key",
            flag(llm.is_some_and(|l| l.allow_insecure_key)),
            flag(args.allow_insecure_key),
        ),
        (
            "--policy",
            path(recorded.policy.as_ref()),
            path(args.policy.as_ref()),
        ),
        (
            "--prompts",
            path(recorded.prompts.as_ref()),
            path(args.prompts.as_ref()),
        ),
        (
            "--model",
            path(recorded.model.as_ref()),
            path(args.model.as_ref()),
        ),
    ];
    let problems: Vec<String> = settings
        .into_iter()
        .filter(|(_, r, g)| r != g)
        .map(|(name, r, g)| {
            let shown = |v: &str| crate::term::line(format!("{name} {v}").trim_end()).into_owned();
            match (r, g) {
                (Some(r), None) => {
                    format!("the run was recorded with `{}`: give it again", shown(&r))
                }
                (None, Some(g)) => format!("`{}` is not a setting of this run", shown(&g)),
                (Some(r), Some(g)) => {
                    format!("`{}` differs from the run's `{}`", shown(&g), shown(&r))
                }
                (None, None) => unreachable!("filtered: equal"),
            }
        })
        .collect();
    anyhow::ensure!(
        problems.is_empty(),
        "settings that decide what runs outside the sandbox, which files are read and where the \
         API key goes are never taken from the archive; on --resume give them again, equal to \
         the run's:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}

/// Machine-written code is always compiled in the sandbox: `--trusted` with an LLM proposer
/// is refused.
pub(super) fn refuse_trusted_llm(trusted: bool, llm: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        !(trusted && llm),
        "--trusted cannot be combined with --llm: code an LLM writes is always compiled in the sandbox"
    );
    Ok(())
}
