//! Allocator plugins (the WIT `allocator` world): the OWL candidate built by the real builder
//! agrees with the host's `owl`, every broken answer gets its typed verdict, runaway guests are
//! stopped, and plugins built against older versions of the package (0.1.0 and 0.1.1 metrics,
//! 0.1.1 allocators) load and compute exactly what the 0.2.0 builds of the same sources do.

mod common;

use autoprune::alloc::{owl, AllocError, Bounds, OwlParams};
use autoprune::build::{component_imports, component_world};
use autoprune::check::{synthetic_units, SyntheticLayer};
use autoprune::layer::LayerKind;
use autoprune::sandbox::{
    AllocatorPlugin, AnyPlugin, Failure, InvalidOutput, Plugin, Policy, World,
};
use common::{builder, cache, small_layer, source};

fn allocator(rel: &str, policy: &Policy) -> AllocatorPlugin {
    let built = builder(true)
        .build(&source(rel))
        .unwrap_or_else(|f| panic!("{rel} failed to build: {f}"));
    assert_eq!(component_world(&built.wasm).unwrap(), World::Allocator);
    AllocatorPlugin::load(&built.wasm, policy, Some(&cache()))
        .unwrap_or_else(|f| panic!("{rel} failed to load: {f}"))
}

fn bad_allocation(rel: &str) -> AllocError {
    let p = allocator(rel, &Policy::default());
    let units = synthetic_units(30, false, 3);
    match p.allocate(0.6, Bounds::HOST, &units) {
        Err(Failure::InvalidOutput(InvalidOutput::BadAllocation { error })) => error,
        other => panic!("{rel}: expected a bad allocation, got {other:?}"),
    }
}

#[test]
fn owl_candidate_equals_the_host_owl() {
    let p = allocator("candidates/owl_alloc.rs", &Policy::default());
    assert_eq!(p.info().name, "owl");
    for (units, target) in [
        (synthetic_units(30, false, 0), 0.7),
        (synthetic_units(30, false, 5), 0.5),
        (synthetic_units(30, true, 1), 0.7),
        (synthetic_units(8, true, 2), 0.95),
    ] {
        let want = owl(target, &units, OwlParams::default()).unwrap();
        let bounds = Bounds::around(target, 2.0 * OwlParams::default().lambda);
        for b in [bounds, Bounds::HOST] {
            let got = p.allocate(target, b, &units).unwrap();
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-9, "unit {i}: plugin {g} vs host {w}");
            }
        }
    }
}

#[test]
fn owl_candidate_hand_example_through_the_sandbox() {
    let p = allocator("candidates/owl_alloc.rs", &Policy::default());
    let mut units = synthetic_units(4, false, 0);
    for (u, r) in units.iter_mut().zip([0.01, 0.02, 0.03, 0.05]) {
        u.params = 1000;
        u.wanda.outlier_ratios = vec![0.0, r, 0.0, 0.0];
    }
    let got = p
        .allocate_with_usage(0.7, Bounds::HOST, &units)
        .expect("valid allocation");
    for (a, b) in got.sparsities.iter().zip([0.77, 0.73, 0.69, 0.61]) {
        assert!((a - b).abs() < 1e-12, "{:?}", got.sparsities);
    }
    assert!(got.usage.fuel > 0 && got.usage.fuel < got.usage.fuel_limit);
}

#[test]
fn out_of_range_is_a_typed_verdict() {
    match bad_allocation("tests/attacks/alloc_out_of_range.rs") {
        AllocError::OutOfRange { unit: 0, value, .. } => assert_eq!(value, 1.5),
        other => panic!("got {other:?}"),
    }
}

#[test]
fn wrong_length_is_a_typed_verdict() {
    assert_eq!(
        bad_allocation("tests/attacks/alloc_wrong_length.rs"),
        AllocError::WrongLength {
            got: 29,
            expected: 30
        }
    );
}

#[test]
fn nan_is_a_typed_verdict() {
    assert_eq!(
        bad_allocation("tests/attacks/alloc_nan.rs"),
        AllocError::NonFinite {
            unit: 1,
            value: "NaN".into()
        }
    );
}

#[test]
fn wrong_mean_is_a_typed_verdict() {
    match bad_allocation("tests/attacks/alloc_wrong_mean.rs") {
        AllocError::WrongMean { mean, target, .. } => {
            assert!((mean - 0.61).abs() < 1e-9 && target == 0.6, "{mean}")
        }
        other => panic!("got {other:?}"),
    }
    // The verdict serialises like every other.
    let f = Failure::InvalidOutput(InvalidOutput::BadAllocation {
        error: AllocError::WrongLength {
            got: 1,
            expected: 2,
        },
    });
    let json = serde_json::to_string(&f).unwrap();
    assert!(json.contains("\"reason\":\"bad_allocation\""), "{json}");
    assert_eq!(serde_json::from_str::<Failure>(&json).unwrap(), f);
}

#[test]
fn endless_allocator_times_out_or_runs_out_of_fuel() {
    let units = synthetic_units(30, false, 0);
    let policy = Policy {
        score_timeout_ms: 300,
        fuel_base: u64::MAX / 4,
        ..Policy::default()
    };
    let p = allocator("tests/attacks/alloc_endless_loop.rs", &policy);
    let t = std::time::Instant::now();
    assert_eq!(
        p.allocate(0.5, Bounds::HOST, &units).unwrap_err(),
        Failure::Timeout { limit_ms: 300 }
    );
    assert!(t.elapsed().as_secs_f64() < 5.0);
    let policy = Policy {
        fuel_base: 5_000_000,
        fuel_per_weight: 0,
        ..Policy::default()
    };
    let p = allocator("tests/attacks/alloc_endless_loop.rs", &policy);
    assert_eq!(
        p.allocate(0.5, Bounds::HOST, &units).unwrap_err(),
        Failure::OutOfFuel { limit: 5_000_000 }
    );
}

#[test]
fn allocator_panic_message_reaches_the_host() {
    let p = allocator("tests/attacks/alloc_panic.rs", &Policy::default());
    match p.allocate(0.5, Bounds::HOST, &synthetic_units(3, false, 0)) {
        Err(Failure::Panic { message }) => {
            assert!(message.contains("allocator boom: 3 units"), "{message}")
        }
        other => panic!("got {other:?}"),
    }
}

#[test]
fn allocator_imports_only_logging_and_types() {
    let built = builder(true)
        .build(&source("candidates/owl_alloc.rs"))
        .unwrap();
    for i in component_imports(&built.wasm).unwrap() {
        assert!(
            autoprune::sandbox::ALLOWED_ALLOCATOR_IMPORTS.contains(&i.as_str()),
            "{i}"
        );
        assert!(!i.contains("/host@"), "{i}");
    }
    // An allocator is not a metric and vice versa.
    assert!(matches!(
        Plugin::load(&built.wasm, &Policy::default(), Some(&cache())),
        Err(Failure::Rejected { .. })
    ));
    let wanda = builder(true).build(&source("candidates/wanda.rs")).unwrap();
    assert!(matches!(
        AllocatorPlugin::load(&wanda.wasm, &Policy::default(), Some(&cache())),
        Err(Failure::Rejected { .. })
    ));
    match AnyPlugin::load(&built.wasm, &Policy::default(), Some(&cache())).unwrap() {
        AnyPlugin::Allocator(a) => assert_eq!(a.info().name, "owl"),
        AnyPlugin::Metric(_) => panic!("owl_alloc is an allocator"),
    }
}

#[test]
fn metric_candidate_still_builds_and_scores_after_the_version_bump() {
    let built = builder(true).build(&source("candidates/wanda.rs")).unwrap();
    assert_eq!(component_world(&built.wasm).unwrap(), World::Metric);
    let imports = component_imports(&built.wasm).unwrap();
    assert!(
        imports
            .iter()
            .all(|i| i.ends_with("@0.2.0") && !i.contains("logging")),
        "{imports:?}"
    );
    let p = match AnyPlugin::load(&built.wasm, &Policy::default(), Some(&cache())).unwrap() {
        AnyPlugin::Metric(p) => p,
        AnyPlugin::Allocator(_) => panic!("wanda is a metric"),
    };
    let layer = small_layer();
    let scores = p.score(&layer.data(0.5)).unwrap().scores;
    let norms = layer.stats.l2_norm();
    for (k, s) in scores.iter().enumerate() {
        let want = layer.weights[k].abs() * norms[k % layer.cols];
        assert!(
            (s - want).abs() <= 1e-6 * want.max(1.0),
            "{k}: {s} vs {want}"
        );
    }
}

#[test]
fn components_built_against_0_1_0_still_load_and_score() {
    // Built from candidates/wanda.rs by the 0.1.0 SDK before the bump; imports `@0.1.0`.
    let wasm = std::fs::read(common::workspace().join("tests/fixtures/wanda-0.1.0.wasm")).unwrap();
    let imports = component_imports(&wasm).unwrap();
    assert!(imports.iter().all(|i| i.ends_with("@0.1.0")), "{imports:?}");
    let p = Plugin::load(&wasm, &Policy::default(), None).expect("semver-compatible link");
    assert_eq!(p.info().name, "wanda");
    assert_eq!(p.package_version(), "0.1.1");
    let layer = small_layer();
    let old = p.score(&layer.data(0.5)).unwrap().scores;
    let new = builder(true).build(&source("candidates/wanda.rs")).unwrap();
    let new = Plugin::load(&new.wasm, &Policy::default(), None).unwrap();
    assert_eq!(new.package_version(), "0.2.0");
    assert_bits_eq(&old, &new.score(&layer.data(0.5)).unwrap().scores);
}

#[test]
fn components_built_against_0_1_1_still_load_and_score() {
    // Built from candidates/ria.rs by the 0.1.1 builder (the last one before 0.2.0).
    let wasm = std::fs::read(common::workspace().join("tests/fixtures/ria-0.1.1.wasm")).unwrap();
    let imports = component_imports(&wasm).unwrap();
    assert!(imports.iter().all(|i| i.ends_with("@0.1.1")), "{imports:?}");
    let old = Plugin::load(&wasm, &Policy::default(), None).expect("0.1.1 link");
    assert_eq!(old.package_version(), "0.1.1");
    let built = builder(true).build(&source("candidates/ria.rs")).unwrap();
    assert!(component_imports(&built.wasm)
        .unwrap()
        .iter()
        .all(|i| i.ends_with("@0.2.0")));
    let new = Plugin::load(&built.wasm, &Policy::default(), None).unwrap();
    assert_eq!(new.package_version(), "0.2.0");
    assert_eq!(old.info(), new.info());
    // Small tiles, so RIA's column pass spans several tiles in both.
    let policy = Policy {
        tile_bytes: 128 * 4 * 5,
        ..Policy::default()
    };
    let (old, new) = (
        Plugin::load(&wasm, &policy, None).unwrap(),
        Plugin::load(&built.wasm, &policy, None).unwrap(),
    );
    for layer in [
        small_layer(),
        SyntheticLayer::generate(96, 40, LayerKind::Down, 4),
    ] {
        let a = old.score(&layer.data(0.5)).unwrap();
        let b = new.score(&layer.data(0.5)).unwrap();
        assert_bits_eq(&a.scores, &b.scores);
    }
}

#[test]
fn allocators_built_against_0_1_1_still_load_and_allocate() {
    // Built from candidates/owl_alloc.rs by the 0.1.1 builder.
    let wasm =
        std::fs::read(common::workspace().join("tests/fixtures/owl_alloc-0.1.1.wasm")).unwrap();
    let imports = component_imports(&wasm).unwrap();
    assert!(imports.iter().all(|i| i.ends_with("@0.1.1")), "{imports:?}");
    let old = AllocatorPlugin::load(&wasm, &Policy::default(), None).expect("0.1.1 link");
    assert_eq!(old.package_version(), "0.1.1");
    let new = allocator("candidates/owl_alloc.rs", &Policy::default());
    assert_eq!(new.package_version(), "0.2.0");
    assert_eq!(old.info(), new.info());
    for (units, target) in [
        (synthetic_units(30, false, 0), 0.7),
        (synthetic_units(30, true, 1), 0.5),
    ] {
        let a = old.allocate(target, Bounds::HOST, &units).unwrap();
        let b = new.allocate(target, Bounds::HOST, &units).unwrap();
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
    // An old allocator is still an allocator, not a metric.
    assert!(matches!(
        AnyPlugin::load(&wasm, &Policy::default(), None),
        Ok(AnyPlugin::Allocator(_))
    ));
}

fn assert_bits_eq(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "[{i}] {x} != {y}");
    }
}
