//! `autoprune eval`: perplexity of any supported model under the protocol.

use super::protocol::{Bars, ProtocolArgs};
use super::Exit;

/// Arguments of `autoprune eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub protocol: ProtocolArgs,
}

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let p = &args.protocol;
    let r = autoprune::run::eval::run(&p.spec(), &mut Bars::new(p.json))?;
    if p.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
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
    }
    Ok(Exit::Success.into())
}
