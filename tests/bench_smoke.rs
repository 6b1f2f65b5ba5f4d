//! Keeps the benchmark suite compiling and working: every figure with tiny
//! sizes (the full suite is `cargo bench --bench suite`).

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../benches/suite/figures.rs"]
mod figures;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_figure_is_measured_with_its_baseline() {
    let figures = figures::run_all(&figures::Sizes::tiny(), None).await;
    assert_eq!(figures.len(), 8, "{figures:?}");
    for f in &figures {
        assert!(f.ours > 0.0 && f.ours.is_finite(), "{f:?}");
        assert!(f.baseline > 0.0 && f.baseline.is_finite(), "{f:?}");
        assert!(f.ratio > 0.0 && f.ratio.is_finite(), "{f:?}");
    }
    println!("{}", figures::table(&figures));
}
