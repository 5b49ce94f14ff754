//! `autoprune eval`: perplexity of any supported model under the protocol.

use super::protocol::{bar, load_model, stream, ProtocolArgs};
use autoprune::eval::{perplexity_with_progress, PerplexityOptions};
use autoprune::report::{peak_rss_bytes, PplReport};

/// Arguments of `autoprune eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub protocol: ProtocolArgs,
}

/// Run it.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let p = &args.protocol;
    let loaded = load_model(
        p.model.as_ref(),
        &super::protocol::device(&p.device)?,
        p.precision,
    )?;
    let eval = stream(&loaded.tokenizer, p.eval.as_ref(), "eval")?;
    let opts = PerplexityOptions {
        seq_len: p.seqlen,
        windows: p.eval_windows,
        batch: p.eval_batch,
    };
    let pb = bar(opts.windows, "eval", p.json);
    let ppl = perplexity_with_progress(&loaded.model, &eval.tokens, &opts, &mut |d, _| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    let report = PplReport::from(ppl);
    if p.json {
        let j = serde_json::json!({
            "model": loaded.path, "eval_source": eval.source, "eval_tokens": eval.tokens.len(),
            "seq_len": p.seqlen, "precision": p.precision, "perplexity": report, "load_seconds": loaded.seconds,
            "peak_rss_bytes": peak_rss_bytes(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "{}: perplexity {:.4} on {} ({} windows × {} tokens, {}, {:.1} s)",
            loaded.path.display(),
            report.ppl,
            eval.source,
            report.windows,
            p.seqlen,
            p.precision,
            report.seconds
        );
    }
    Ok(0)
}
