//! The `autoprune` binary: parse the command line, run it, print the whole error chain.

mod cli;

use clap::Parser;
use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Prune(_)
            | Command::Eval(_)
            | Command::Sweep(_)
            | Command::Search(_)
            | Command::Fidelity(_)
            | Command::Worker(_)
    ) || matches!(&cli.command, Command::Bench(a) if a.stats)
    {
        // Load the CPU matrix-product library now, before any other thread exists (it reads
        // its kernel choice from the environment while loading).
        let _ = autoprune::model::init_cpu_matmul();
    }
    let result = match cli.command {
        Command::Build(a) => cli::build::run(a),
        Command::Check(a) => cli::check::run(a),
        Command::Sdk(a) => cli::sdk::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Prune(a) => cli::prune::run(*a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Sweep(a) => cli::sweep::run(*a),
        Command::Search(a) => cli::search::run(*a),
        Command::Runs(a) => cli::search::runs(a),
        Command::Fidelity(a) => cli::fidelity::run(*a),
        Command::Serve(a) => cli::board::serve(*a),
        Command::Tokens(a) => cli::board::tokens(a),
        Command::Worker(a) => cli::board::worker(*a),
        Command::Slurm(a) => cli::board::slurm(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Errors can carry plugin or LLM text (panic messages, diagnostics): escaped.
            let show =
                |x: &dyn std::fmt::Display| autoprune::term::text(&x.to_string()).into_owned();
            eprintln!("error: {}", show(&e));
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {}", show(&cause));
            }
            std::process::exit(cli::Exit::Error.into());
        }
    }
}
