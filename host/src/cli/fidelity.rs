//! `autoprune fidelity`: how well each level of the search ladder predicts the held-out
//! ranking, on a fixed panel of metrics (resumable; results in a folder).

use super::flags::{CalibFlags, SandboxFlags};
use super::protocol::ProtocolArgs;
use anyhow::Context;
use autoprune::search::archive::{Archive, Status};
use autoprune::search::cascade::LadderConfig;
use autoprune::search::data::{DataSpec, ValidationSource};
use autoprune::search::fidelity::{analyze, builtin_panel, markdown, Measured, PanelEntry};
use autoprune::search::objective::Objective;
use std::path::PathBuf;

/// Arguments of `autoprune fidelity`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder for the results (`results.jsonl`, one line per metric, is read back on a rerun:
    /// measured metrics are skipped), `fidelity.json` and `fidelity.md`.
    #[arg(long)]
    pub out: PathBuf,
    /// The setting (the study measures one): e.g. `0.5`, `2:4`, `0.7+sdsa`.
    #[arg(long, default_value = "0.5")]
    pub objective: Objective,
    /// Also measure every `.rs` candidate in this folder.
    #[arg(long)]
    pub panel: Vec<PathBuf>,
    /// Also measure the best evaluated candidates of this search run.
    #[arg(long)]
    pub from_run: Vec<PathBuf>,
    /// How many of each `--from-run`'s best candidates.
    #[arg(long, default_value_t = 5)]
    pub from_run_top: usize,
    /// Leave out the built-in panel.
    #[arg(long)]
    pub no_builtin: bool,
    /// Validation windows measured (the sequential level reads 8, 16 and all of them).
    #[arg(long, default_value_t = 32)]
    pub validation_windows: usize,
    /// Where the validation windows of the screen and sequential levels come from
    /// (`spread`, `recent`, `eval-tail`; see `autoprune search --help`).
    #[arg(long, value_enum, default_value_t = ValidationSource::Recent)]
    pub validation_source: ValidationSource,
    /// Other validation sources measured on the same prunings (levels named with the source,
    /// e.g. `sequential@32 eval-tail`), comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub other_sources: Vec<ValidationSource>,
    /// Measure only these panel metrics (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Screen windows measured (the screen levels read 1, 2, 4, 8 and 16 of them).
    #[arg(long, default_value_t = 16)]
    pub screen_windows: usize,
    /// Calibration windows of the former proxy level (sequential, few windows).
    #[arg(long, default_value_t = 4)]
    pub proxy_calib_windows: usize,
    /// Validation windows of the former proxy level.
    #[arg(long, default_value_t = 4)]
    pub proxy_validation_windows: usize,
    /// Do not compute the gradient statistic (the panel's gradient metrics are left out).
    #[arg(long)]
    pub no_gradient: bool,
    /// Only analyse what `results.jsonl` holds.
    #[arg(long)]
    pub analyze_only: bool,
    #[command(flatten)]
    pub calib: CalibFlags,
    #[command(flatten)]
    pub sandbox: SandboxFlags,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
}

/// The panel: built-in, folders, and search runs' best candidates.
fn panel(args: &Args) -> anyhow::Result<Vec<PanelEntry>> {
    let mut p = if args.no_builtin {
        Vec::new()
    } else {
        builtin_panel(!args.no_gradient)
    };
    for dir in &args.panel {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        files.sort();
        for f in files {
            let source = autoprune::data::read_text(&f)?;
            let name = f
                .file_stem()
                .map_or("?".into(), |s| s.to_string_lossy().into_owned());
            p.push(PanelEntry { name, source });
        }
    }
    for run in &args.from_run {
        let a = Archive::open_existing(&run.join("archive.sqlite"))?;
        let mut nodes: Vec<_> = a
            .nodes()?
            .into_iter()
            .filter(|n| n.status == Status::Evaluated && !n.operator.is_seed())
            .collect();
        nodes.sort_by(|x, y| {
            x.fitness
                .unwrap_or(f64::MAX)
                .total_cmp(&y.fitness.unwrap_or(f64::MAX))
        });
        let tag = run
            .file_name()
            .map_or("run".into(), |s| s.to_string_lossy().into_owned());
        for n in nodes.into_iter().take(args.from_run_top) {
            p.push(PanelEntry {
                name: format!("{tag}#{}", n.id),
                source: n.code,
            });
        }
    }
    if !args.only.is_empty() {
        if let Some(missing) = args.only.iter().find(|n| !p.iter().any(|e| &e.name == *n)) {
            anyhow::bail!("--only: the panel has no metric named `{missing}`");
        }
        p.retain(|e| args.only.contains(&e.name));
    }
    Ok(p)
}

fn read_results(path: &std::path::Path) -> Vec<Measured> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Measure the panel's metrics not yet in `done` (appended to `results` as they land).
fn measure_missing(
    args: &Args,
    results: &std::path::Path,
    done: &mut Vec<Measured>,
) -> anyhow::Result<()> {
    let panel = panel(args)?;
    let todo: Vec<&PanelEntry> = panel
        .iter()
        .filter(|e| {
            let h = autoprune::sandbox::sha256_hex(e.source.as_bytes());
            !done.iter().any(|d| {
                d.name == e.name
                    && d.source_hash == h
                    && d.validation_source == args.validation_source.name()
            })
        })
        .collect();
    eprintln!(
        "{} metrics in the panel, {} measured before, {} to measure",
        panel.len(),
        panel.len() - todo.len(),
        todo.len()
    );
    if !todo.is_empty() {
        let spec = autoprune::search::fidelity::StudyData {
            data: DataSpec {
                model: args.protocol.model.as_ref(),
                calib: args.calib.calib.as_ref(),
                eval: args.protocol.eval.as_ref(),
                calib_windows: args.calib.calib_windows,
                validation_windows: args.validation_windows,
                validation_source: args.validation_source,
                heldout_windows: args.protocol.eval_windows,
                seq_len: args.protocol.seqlen,
                precision: args.protocol.precision,
            },
            device: &args.protocol.device,
            proxy_calib_windows: args.proxy_calib_windows,
            proxy_validation_windows: args.proxy_validation_windows,
            other_sources: args.other_sources.clone(),
            ladder: LadderConfig {
                objective: args.objective.clone(),
                screen_windows: args.screen_windows,
                promote_ratio: f64::INFINITY,
                calib_batch: 8,
                gradient: !args.no_gradient,
            },
        };
        let builder = args.sandbox.build.builder()?;
        let policy = args.sandbox.policy()?;
        done.extend(autoprune::search::fidelity::measure_panel(
            &spec,
            builder,
            policy,
            &todo,
            results,
            &mut |line| eprintln!("{line}"),
        )?);
    }
    Ok(())
}

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    args.protocol.only_auto_path("fidelity")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let results = args.out.join("results.jsonl");
    let mut done = read_results(&results);
    done.retain(|d| d.validation_source == args.validation_source.name());
    if !args.analyze_only {
        measure_missing(&args, &results, &mut done)?;
    }
    let counts = |standard: &[usize], max: usize| {
        let mut v: Vec<usize> = standard.iter().copied().filter(|&n| n < max).collect();
        v.push(max);
        v
    };
    let screens = counts(&[1, 2, 4, 8, 16], args.screen_windows);
    let vals = counts(&[8, 16, 32], args.validation_windows);
    let study = analyze(&done, "wanda", &screens, &vals).map_err(anyhow::Error::msg)?;
    std::fs::write(
        args.out.join("fidelity.json"),
        serde_json::to_string_pretty(&study)?,
    )?;
    let cpu = autoprune::model::cpu_report();
    let md = markdown(
        &study,
        &format!(
            "Fidelity of the evaluation ladder ({}; {}, {} threads)",
            args.objective, cpu.matmul, cpu.threads
        ),
    );
    std::fs::write(args.out.join("fidelity.md"), &md)?;
    if args.protocol.json {
        println!("{}", serde_json::to_string_pretty(&study)?);
    } else {
        println!("{md}");
    }
    Ok(0)
}
