//! Whose fault an evaluation's failure is: the candidate's (its typed verdict, recorded with
//! it) or the host's (a fault of ours, never recorded as the candidate's verdict).

use crate::calib::CalibError;
use crate::pipeline::PipelineError;
use crate::sandbox::Failure;

/// Something of ours failed while a candidate was evaluated: nothing the candidate did, so
/// it is not its verdict. The search stops with this error and leaves the candidate `pending`,
/// so `--resume` evaluates it again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostFault {
    /// The dense statistics have no entry for a probe layer.
    #[error("no dense statistics for the probe layer {layer}")]
    MissingStatistics {
        /// The probe layer.
        layer: String,
    },
    /// Wanda's reference losses are behind a lock that a panicking thread poisoned.
    #[error("Wanda's reference losses are unavailable: their lock is poisoned")]
    PoisonedLock,
    /// The dense pass with Hessians (the WIT 0.2.0 inputs) failed.
    #[error("the Hessian-derived inputs could not be computed: {0}")]
    HessianInputs(String),
    /// Wanda, the reference every level compares with, failed.
    #[error("the Wanda reference failed: {0}")]
    Reference(String),
    /// The pruning pipeline failed on our side (a forward pass, the configuration).
    #[error("pruning failed: {0}")]
    Pipeline(String),
    /// Evaluating the pruned model failed.
    #[error("evaluation failed: {0}")]
    Evaluation(String),
    /// The compiler could not be run (its build folder, starting the sandbox).
    #[error("the compiler could not be run: {0}")]
    Build(String),
    /// A board's worker could not evaluate the candidate, or the board could not be reached
    /// (`search --workers`).
    #[error("remote evaluation failed: {0}")]
    Remote(String),
}

/// Why a level of the ladder did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The candidate failed: its verdict.
    #[error(transparent)]
    Guest(#[from] Failure),
    /// The host failed.
    #[error("host fault: {0}")]
    Host(#[from] HostFault),
}

/// Whose failure a pipeline error is. The metric's verdict, and what the candidate's pruning
/// can break downstream (a mask from its scores, the Hessians or statistics of the activations
/// its pruned blocks produce), are the candidate's (the latter as `rejected`, as before);
/// the rest (a forward pass, the configuration, the gradient pass) is the host's.
pub(super) fn failure_of(e: PipelineError) -> EvalError {
    match e {
        PipelineError::Metric { failure, .. } => EvalError::Guest(failure),
        e @ (PipelineError::Mask { .. }
        | PipelineError::Hessian { .. }
        | PipelineError::Calib(CalibError::Stats(_))) => EvalError::Guest(Failure::Rejected {
            reason: format!("pruning failed: {e}"),
        }),
        e => EvalError::Host(HostFault::Pipeline(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{LayerId, LayerKind};
    use crate::prune::mask::MaskError;

    #[test]
    fn pipeline_errors_are_the_candidates_or_the_hosts() {
        let layer = LayerId {
            block: 0,
            num_blocks: 1,
            kind: LayerKind::Q,
        };
        let f = Failure::StackOverflow;
        assert_eq!(
            failure_of(PipelineError::Metric {
                layer,
                failure: f.clone()
            }),
            EvalError::Guest(f)
        );
        let mask = failure_of(PipelineError::Mask {
            layer,
            error: MaskError::Sparsity(2.0),
        });
        assert!(
            matches!(&mask, EvalError::Guest(Failure::Rejected { reason }) if reason.starts_with("pruning failed: mask for")),
            "{mask:?}"
        );
        let stats = failure_of(PipelineError::Calib(CalibError::Stats("nan".into())));
        assert!(matches!(stats, EvalError::Guest(_)), "{stats:?}");
        let config = failure_of(PipelineError::Config("no".into()));
        assert_eq!(
            config,
            EvalError::Host(HostFault::Pipeline("configuration: no".into()))
        );
        // A guest failure reads as its verdict; a host fault says so.
        assert_eq!(
            EvalError::Guest(Failure::StackOverflow).to_string(),
            "stack overflow"
        );
        assert_eq!(
            EvalError::Host(HostFault::PoisonedLock).to_string(),
            "host fault: Wanda's reference losses are unavailable: their lock is poisoned"
        );
    }
}
