//! Keeps the benchmark suite compiling and working: every figure with tiny
//! sizes (the full suite is `cargo bench --bench suite`).

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../benches/suite/figures.rs"]
mod figures;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_figure_is_measured_with_its_baseline() {
    let sizes = figures::Sizes::tiny();
    let mut figures = figures::run_all(&sizes, None, None).await;
    // The cluster's eight figures need PostgreSQL and NATS (CI has them;
    // elsewhere their absence was said loudly).
    let cluster = figures
        .iter()
        .filter(|f| f.name.contains("PostgreSQL") || f.name.contains("another node"))
        .count();
    assert!(
        cluster == 8 || (cluster == 0 && std::env::var_os("CI").is_none()),
        "{figures:?}"
    );
    assert_eq!(figures.len(), 10 + cluster, "{figures:?}");
    for f in &figures {
        assert!(f.ours > 0.0 && f.ours.is_finite(), "{f:?}");
        assert!(f.baseline > 0.0 && f.baseline.is_finite(), "{f:?}");
        assert!(f.ratio > 0.0 && f.ratio.is_finite(), "{f:?}");
    }
    // The held-connections figure runs the real node binary (built by
    // `cargo test --workspace`). With a handful of clients the node's
    // memory growth may be zero, so only its shape is checked.
    let node =
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_messenger")).with_file_name("rendezvous");
    if node.exists() {
        let held = figures::held_connections(&sizes, &node, None).await;
        assert_eq!(held.len(), 5, "{held:?}");
        assert_eq!(held[0].ours, sizes.held_clients as f64);
        // Every client came back after the node's kill -9 and restart.
        assert_eq!(held[3].met, Some(true), "{held:?}");
        assert_eq!(held[4].met, Some(true), "{held:?}");
        assert!(
            held.iter().all(|f| f.ours.is_finite() && f.ours >= 0.0),
            "{held:?}"
        );
        assert!(
            held[2].ours > 0.0,
            "a presence change takes some time: {held:?}"
        );
        figures.extend(held);
    }
    // The directory at several sizes (the full suite: 1k, 10k, 100k).
    let sized = figures::directory_sizes(&sizes).await;
    assert_eq!(sized.len(), 2 * sizes.directory_sizes.len(), "{sized:?}");
    assert!(
        sized.iter().all(|f| f.ours > 0.0 && f.baseline > 0.0),
        "{sized:?}"
    );
    // The figures between real `messenger` processes: files and tunnels.
    let messenger = std::path::PathBuf::from(env!("CARGO_BIN_EXE_messenger"));
    let between = [
        figures::file_transfer(&sizes, &messenger).await,
        figures::tunnels(&sizes, &messenger).await,
    ];
    assert_eq!(between[0].len(), 5, "{:?}", between[0]);
    assert_eq!(between[1].len(), 7, "{:?}", between[1]);
    for f in between.iter().flatten() {
        assert!(f.ours.is_finite() && f.ours >= 0.0, "{f:?}");
        assert!(f.baseline > 0.0 && f.baseline.is_finite(), "{f:?}");
    }
    figures.extend(between.into_iter().flatten());
    // The web window's, in headless Chromium (CI installs it; elsewhere
    // its absence was said loudly).
    let web = figures::web(&sizes, &messenger).await;
    assert!(
        web.len() == 5 || (web.is_empty() && std::env::var_os("CI").is_none()),
        "{web:?}"
    );
    for f in &web {
        assert!(f.ours > 0.0 && f.ours.is_finite(), "{f:?}");
    }
    figures.extend(web);
    println!("{}", figures::table(&figures));
}
