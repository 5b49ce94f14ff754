//! The `autoprune` binary: parse the command line, run it, print the whole error chain.

mod cli;

use clap::Parser;
use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => cli::build::run(a),
        Command::Check(a) => cli::check::run(a),
        Command::Sdk(a) => cli::sdk::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Prune(a) => cli::prune::run(*a),
        Command::Eval(a) => cli::eval::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::exit(2);
        }
    }
}
