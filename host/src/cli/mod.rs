//! The `autoprune` command line: one file per subcommand.

pub mod alloc;
pub mod bench;
pub mod board;
pub mod build;
pub mod check;
pub mod eval;
pub mod fidelity;
pub mod flags;
pub mod protocol;
pub mod prune;
pub mod sdk;
pub mod search;
pub mod sweep;

use autoprune::build::{default_cache, BuildOptions, Builder, Isolation};
use clap::{Parser, Subcommand};

/// Safe, automated discovery of LLM pruning metrics.
#[derive(Debug, Parser)]
#[command(name = "autoprune", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compile a candidate `.rs` file into a metric component, inside the compile sandbox.
    Build(build::Args),
    /// Run a metric or allocator plugin (`.rs` or `.wasm`) through its validation suite.
    Check(check::Args),
    /// Build (if needed) and print the folder of the prebuilt guest SDK.
    Sdk(sdk::Args),
    /// Prune a model with a metric plugin (or SparseGPT); measure perplexity; export.
    Prune(Box<prune::Args>),
    /// Grid of sparsities × allocations × metrics under one protocol: table and plot.
    Sweep(Box<sweep::Args>),
    /// Search for pruning metrics: GP or random proposers, cascade, SQLite archive, resume.
    Search(Box<search::Args>),
    /// Inspect search runs (`runs show <dir>`).
    Runs(search::RunsArgs),
    /// Measure how well each level of the search ladder predicts the held-out ranking, on a
    /// panel of metrics (Kendall's τ, cost per candidate).
    Fidelity(Box<fidelity::Args>),
    /// Perplexity of a model under the protocol.
    Eval(eval::Args),
    /// Benchmark the sandbox: wasm vs native Wanda, build and instantiation times.
    Bench(bench::Args),
    /// The leaderboard service: submissions over HTTP, a durable job queue, the board page.
    Serve(Box<board::ServeArgs>),
    /// Issue or revoke a board's bearer tokens.
    Tokens(board::TokensArgs),
    /// Evaluate a board's jobs (any number of workers, on any machine).
    Worker(Box<board::WorkerArgs>),
    /// Run a board's workers on a Slurm cluster (`slurm submit`, `slurm status`).
    Slurm(board::SlurmArgs),
}

/// Flags shared by every subcommand that compiles candidate source.
#[derive(Debug, clap::Args)]
pub struct BuildFlags {
    /// Compile without the bubblewrap sandbox. Only for source you wrote yourself.
    #[arg(long)]
    pub trusted: bool,
    /// Compile-time limit in seconds (hard kill; 1..=3600).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=autoprune::build::MAX_BUILD_TIMEOUT_SECS))]
    pub build_timeout: u64,
}

impl BuildFlags {
    /// A builder with these flags and the default cache.
    pub fn builder(&self) -> anyhow::Result<Builder> {
        Ok(Builder::new(default_cache()?, self.options())?)
    }

    /// The build options these flags select.
    pub fn options(&self) -> BuildOptions {
        BuildOptions {
            isolation: if self.trusted {
                Isolation::Trusted
            } else {
                Isolation::Bwrap
            },
            timeout_secs: self.build_timeout,
            ..BuildOptions::default()
        }
    }
}

/// How `autoprune` exits; the numbers are documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Exit {
    /// Done.
    Success = 0,
    /// A plugin, candidate or allocator failed its verdict (build, check, or during a run).
    Verdict = 1,
    /// An error: bad flags or input, a missing file, a host failure (printed with its causes).
    Error = 2,
    /// Interrupted by Ctrl-C (SIGINT) after saving what was done (`search` resumes from it).
    Interrupted = 130,
}

impl From<Exit> for i32 {
    fn from(e: Exit) -> i32 {
        e as i32
    }
}

/// Exit status when a plugin or candidate fails its verdict (as opposed to a usage error).
pub const EXIT_VERDICT: i32 = Exit::Verdict as i32;

/// One line for a task's zero-shot accuracy (the task name is the user's word: escaped).
pub fn task_line(t: &autoprune::eval::tasks::TaskScore) -> String {
    format!(
        "{}: acc {:.4} ± {:.4}, acc_norm {:.4} ± {:.4} ({} items, {:.1} s)",
        autoprune::term::line(&t.task),
        t.acc,
        t.acc_stderr,
        t.acc_norm,
        t.acc_norm_stderr,
        t.items,
        t.seconds
    )
}
