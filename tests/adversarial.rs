//! Run-time attacks: each hostile guest must produce its typed verdict, and the host survives
//! all of them in one run.

mod common;

use autoprune::sandbox::{Failure, InvalidOutput, Plugin, Policy};
use common::{builder, cache, plugin, small_layer, source};

fn score(rel: &str, policy: &Policy) -> Failure {
    let p = plugin(rel, policy).unwrap_or_else(|f| panic!("{rel} failed to load: {f}"));
    let layer = small_layer();
    match p.score(&layer.data(0.5)) {
        Ok(_) => panic!("{rel}: expected a failure, got scores"),
        Err(f) => f,
    }
}

#[test]
fn endless_loop_times_out_on_the_wall_clock() {
    let policy = Policy {
        score_timeout_ms: 300,
        fuel_base: u64::MAX / 4,
        ..Policy::default()
    };
    let t = std::time::Instant::now();
    assert_eq!(
        score("tests/attacks/endless_loop.rs", &policy),
        Failure::Timeout { limit_ms: 300 }
    );
    assert!(
        t.elapsed().as_secs_f64() < 5.0,
        "the deadline really stops it"
    );
}

#[test]
fn endless_loop_runs_out_of_fuel_deterministically() {
    let policy = Policy {
        fuel_base: 5_000_000,
        fuel_per_weight: 0,
        ..Policy::default()
    };
    assert_eq!(
        score("tests/attacks/endless_loop.rs", &policy),
        Failure::OutOfFuel { limit: 5_000_000 }
    );
}

#[test]
fn memory_bomb_hits_the_cap() {
    let policy = Policy {
        memory_bytes: 64 << 20,
        ..Policy::default()
    };
    assert_eq!(
        score("tests/attacks/memory_bomb.rs", &policy),
        Failure::OutOfMemory {
            limit_bytes: 64 << 20
        }
    );
}

#[test]
fn deep_recursion_overflows_the_stack() {
    assert_eq!(
        score("tests/attacks/deep_recursion.rs", &Policy::default()),
        Failure::StackOverflow
    );
}

#[test]
fn panic_message_reaches_the_host() {
    match score("tests/attacks/panic.rs", &Policy::default()) {
        Failure::Panic { message } => {
            assert!(
                message.contains("boom: layer of 128 columns is cursed"),
                "{message}"
            );
        }
        other => panic!("expected a panic verdict, got {other:?}"),
    }
}

#[test]
fn wrong_length_output_is_invalid() {
    match score("tests/attacks/wrong_length.rs", &Policy::default()) {
        Failure::InvalidOutput(InvalidOutput::WrongLength {
            row_start: 0,
            len,
            cols: 128,
            ..
        }) => {
            assert_eq!(len, 64 * 128 - 1);
        }
        other => panic!("got {other:?}"),
    }
}

#[test]
fn nan_and_inf_outputs_are_invalid() {
    match score("tests/attacks/nan_output.rs", &Policy::default()) {
        Failure::InvalidOutput(InvalidOutput::NonFinite {
            row: 0,
            col: 0,
            value,
        }) => {
            assert_eq!(value, "NaN")
        }
        other => panic!("got {other:?}"),
    }
    match score("tests/attacks/inf_output.rs", &Policy::default()) {
        Failure::InvalidOutput(InvalidOutput::NonFinite {
            row: 63,
            col: 3,
            value,
        }) => {
            assert_eq!(value, "inf")
        }
        other => panic!("got {other:?}"),
    }
}

#[test]
fn oversized_output_is_stopped_by_hostcall_fuel() {
    assert_eq!(
        score("tests/attacks/oversized_output.rs", &Policy::default()),
        Failure::InvalidOutput(InvalidOutput::Oversized)
    );
}

#[test]
fn missing_and_repeated_rows_are_invalid() {
    assert_eq!(
        score("tests/attacks/missing_rows.rs", &Policy::default()),
        Failure::InvalidOutput(InvalidOutput::MissingRows {
            missing: 64,
            rows: 64,
            first: 0
        })
    );
    assert_eq!(
        score("tests/attacks/double_write.rs", &Policy::default()),
        Failure::InvalidOutput(InvalidOutput::RowWrittenTwice { row: 0 })
    );
}

#[test]
fn guest_errors_are_typed() {
    match score("tests/attacks/guest_error.rs", &Policy::default()) {
        Failure::GuestError(e) => {
            assert_eq!(e.kind, "unsupported");
            assert!(e.message.contains("128 columns"));
        }
        other => panic!("got {other:?}"),
    }
}

#[test]
fn undeclared_hessian_inputs_are_unsupported_not_data() {
    // The synthetic layer carries both inputs; the guest never declared them.
    let layer = small_layer();
    assert!(layer.data(0.5).hessian_inverse_diagonal.is_some());
    match score("tests/attacks/undeclared_hessian.rs", &Policy::default()) {
        Failure::GuestError(e) => {
            assert_eq!(e.kind, "unsupported");
            assert!(
                e.message
                    .contains("hessian: hessian-inverse-diagonal needs")
                    && e.message.contains("output: output-stats needs"),
                "{}",
                e.message
            );
        }
        other => panic!("got {other:?}"),
    }
}

#[test]
fn declared_hessian_inputs_the_host_did_not_compute_are_unsupported() {
    let p = plugin("candidates/obs.rs", &Policy::default()).expect("obs loads");
    assert!(p.info().needs_hessian_inverse_diagonal && !p.info().needs_output_stats);
    let layer = small_layer();
    let mut data = layer.data(0.5);
    data.hessian_inverse_diagonal = None;
    match p.score(&data) {
        Err(Failure::GuestError(e)) => {
            assert_eq!(e.kind, "unsupported");
            assert!(
                e.message.contains("Hessian inverse diagonal"),
                "{}",
                e.message
            );
        }
        other => panic!("got {other:?}"),
    }
    // With it, the scores are w² / [H⁻¹]_jj.
    let scores = p.score(&layer.data(0.5)).expect("scores").scores;
    for (k, s) in scores.iter().enumerate() {
        let w = layer.weights[k];
        assert_eq!(*s, w * w / layer.hessian_inverse_diagonal[k % layer.cols]);
    }
}

fn load_wat(wat: &str) -> Failure {
    let bytes = wat::parse_str(wat).expect("valid WAT");
    Plugin::load(&bytes, &Policy::default(), None).expect_err("must be rejected")
}

#[test]
fn components_importing_wasi_or_unknown_interfaces_are_rejected() {
    let wasi = r#"(component
        (import "wasi:cli/environment@0.2.0" (instance
            (export "get-environment" (func (result (list (tuple string string)))))))
    )"#;
    match load_wat(wasi) {
        Failure::Rejected { reason } => {
            assert!(reason.contains("wasi:cli/environment"), "{reason}")
        }
        other => panic!("got {other:?}"),
    }
    let unknown = r#"(component (import "evil:net/socket@1.0.0" (instance)))"#;
    assert!(matches!(load_wat(unknown), Failure::Rejected { .. }));
    // A component that imports nothing but does not export the metric world.
    assert!(matches!(load_wat("(component)"), Failure::Rejected { .. }));
}

#[test]
fn garbage_and_truncated_components_are_rejected() {
    for bytes in [&b""[..], b"\0asm", b"definitely not wasm", &[0u8; 4096][..]] {
        assert!(matches!(
            Plugin::load(bytes, &Policy::default(), None),
            Err(Failure::Rejected { .. })
        ));
    }
    let good = builder(true)
        .build(&source("candidates/wanda.rs"))
        .expect("wanda builds")
        .wasm;
    for cut in [8, good.len() / 2, good.len() - 1] {
        match Plugin::load(&good[..cut], &Policy::default(), Some(&cache())) {
            Err(Failure::Rejected { .. }) => {}
            other => panic!("truncated at {cut}: {other:?}"),
        }
    }
    // The untouched component still loads and scores after all of the above.
    let p = Plugin::load(&good, &Policy::default(), Some(&cache())).expect("loads");
    let layer = small_layer();
    assert_eq!(
        p.score(&layer.data(0.5)).expect("scores").scores.len(),
        64 * 128
    );
}

#[test]
fn a_trapped_plugin_is_usable_again_with_a_fresh_store() {
    // The panic attack traps on every call, and every call gets its own verdict.
    let p = plugin("tests/attacks/panic.rs", &Policy::default()).unwrap();
    let layer = small_layer();
    for _ in 0..3 {
        assert!(matches!(
            p.score(&layer.data(0.5)),
            Err(Failure::Panic { .. })
        ));
    }
}

/// Host calls are charged (issue 14, item 6): re-reading the same 256×256 tile 20,000 times
/// costs the host ~5 GB of copying at almost no wasm fuel, and used to pass. Each read now
/// costs 4 fuel per byte plus the call fee, so the grant (2²⁸ + 4096 per weight) runs out
/// after ~510 reads, deterministically.
#[test]
fn rereading_a_tile_is_charged_and_runs_out_of_fuel() {
    let p = plugin("tests/attacks/reread_tile.rs", &Policy::default()).unwrap();
    let layer =
        autoprune::check::SyntheticLayer::generate(256, 256, autoprune::layer::LayerKind::Q, 1);
    let t = std::time::Instant::now();
    let f = p.score(&layer.data(0.5)).unwrap_err();
    let grant = Policy::default().fuel_for(256 * 256);
    assert_eq!(f, Failure::OutOfFuel { limit: grant });
    assert!(t.elapsed().as_secs_f64() < 5.0);
    // An ordinary metric pays its host calls too, and stays far inside its grant: one read and
    // one write of every weight (8 bytes, 32 fuel) plus the per-call fee.
    let wanda = plugin("candidates/wanda.rs", &Policy::default()).unwrap();
    let used = wanda.score(&layer.data(0.5)).unwrap().usage;
    let moved = 8 * 256 * 256;
    assert!(used.fuel > 4 * moved, "{used:?}");
    assert!((used.fuel as f64) < 0.02 * grant as f64, "{used:?}");
}
