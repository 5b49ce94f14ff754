//! `autoprune eval`: perplexity of any supported model under the protocol, and zero-shot
//! accuracy on multiple-choice tasks.

use super::protocol::{Bars, ProtocolArgs};
use super::Exit;
use autoprune::run::eval::TaskSpec;
use std::path::PathBuf;

/// Zero-shot task flags, shared by `eval` and `prune`.
#[derive(Debug, clap::Args)]
pub struct TaskFlags {
    /// Zero-shot multiple-choice tasks: JSONL files (`{"context", "choices", "gold"}` a line,
    /// scored as lm-evaluation-harness does: acc and acc_norm) or `sotu-next`, the built-in
    /// task (the true next sentence of a SOTU speech from 1990 on, among four). Repeatable.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Items of the built-in task.
    #[arg(long, default_value_t = 200)]
    pub task_items: usize,
}

impl TaskFlags {
    /// The library's description of these flags.
    pub fn spec(&self) -> TaskSpec {
        TaskSpec {
            tasks: self.tasks.clone(),
            items: self.task_items,
        }
    }
}

/// Arguments of `autoprune eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub tasks: TaskFlags,
    /// Write the items of the `--tasks` (built-in ones included) to this JSONL file and stop,
    /// e.g. to score the same items with another tool.
    #[arg(long)]
    pub write_tasks: Option<PathBuf>,
    /// Read the model one block at a time: memory is one block plus the windows' hidden
    /// states (64 × 512 × hidden × 4 bytes by default), the same perplexity; no zero-shot tasks.
    #[arg(long)]
    pub stream: bool,
}

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let p = &args.protocol;
    p.only_auto_path("eval")?;
    if let Some(out) = &args.write_tasks {
        let items: Vec<_> = args
            .tasks
            .spec()
            .load()?
            .into_iter()
            .flat_map(|t| t.1)
            .collect();
        autoprune::eval::tasks::write_tasks(out, &items)?;
        println!("wrote {} items to {}", items.len(), out.display());
        return Ok(Exit::Success.into());
    }
    let r = autoprune::run::eval::run(
        &p.spec(),
        &args.tasks.spec(),
        args.stream,
        &mut Bars::new(p.json),
    )?;
    if p.json {
        println!("{}", autoprune::report::sorted_json_pretty(&r)?);
        return Ok(Exit::Success.into());
    }
    println!(
        "{}: perplexity {:.4} on {} ({} windows × {} tokens, {}, {:.1} s)",
        r.model.display(),
        r.perplexity.ppl,
        r.eval_source,
        r.perplexity.windows,
        r.seq_len,
        r.precision,
        r.perplexity.seconds
    );
    for t in &r.zero_shot {
        println!("{}", super::task_line(t));
    }
    Ok(Exit::Success.into())
}
