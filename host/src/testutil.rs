//! Helpers shared by the library's unit tests.

/// Fail (with the reason) if the running CPU lacks one of `features`. Tests that need a CPU
/// feature are compiled as ignored where the build machine lacks it (see `host/build.rs`);
/// this catches a test binary built on one CPU and run on another.
pub(crate) fn require_cpu(features: &[&str]) {
    #[cfg(target_arch = "x86_64")]
    for &f in features {
        let has = match f {
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
            "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
            "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
            "avx512cd" => std::arch::is_x86_feature_detected!("avx512cd"),
            "avx512bf16" => std::arch::is_x86_feature_detected!("avx512bf16"),
            other => panic!("require_cpu: unknown feature {other}"),
        };
        assert!(
            has,
            "this test binary was built on a CPU with {f} but runs on one without it: rebuild \
             the tests on this machine"
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    panic!("require_cpu({features:?}): not an x86-64 CPU; rebuild the tests on this machine");
}

/// A test cannot run for `reason` (its data or a tool is missing): under CI (`CI` set, as
/// `.ci/run` does) this is a failure (panics); elsewhere it prints `SKIPPED (not run):
/// <reason>` to stderr and the caller returns. The integration tests' `common::not_run` is the
/// same rule.
pub(crate) fn not_run(reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{reason}: CI is set, so a test that cannot run fails (run ./setup.sh first)"
    );
    eprintln!("SKIPPED (not run): {reason}");
}
