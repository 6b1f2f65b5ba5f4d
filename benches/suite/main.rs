//! The benchmark suite: `cargo bench --bench suite` (add `-- --quick` for
//! small sizes, `-- --only scale|round-trip|cold|directory|directory-sizes|cluster|window|web|files|tunnels|held` for one group,
//! `--held-clients N` to hold another number of clients, `--directory-sizes 1000,10000` for other directory sizes). Prints a table and writes the same figures as JSON to
//! `target/bench-results.json` (or `--json PATH`).

mod figures;

fn main() {
    // BENCH_LOG=messenger=debug shows what the clients do.
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--held-worker") {
        figures::load::worker(&args[2..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/bench-results.json"
            ))
        });
    let mut sizes = if quick {
        figures::Sizes::tiny()
    } else {
        figures::Sizes::full()
    };
    if let Some(n) = args
        .iter()
        .position(|a| a == "--held-clients")
        .and_then(|i| args.get(i + 1)?.parse().ok())
    {
        sizes.held_clients = n;
    }
    if let Some(list) = args
        .iter()
        .position(|a| a == "--directory-sizes")
        .and_then(|i| args.get(i + 1))
    {
        sizes.directory_sizes = list
            .split(',')
            .map(|n| {
                n.parse()
                    .expect("--directory-sizes takes numbers: 1000,10000")
            })
            .collect();
    }
    // The binary under test, built in the same profile.
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("messenger")))
        .filter(|p| p.exists());
    // The held-connections figure runs its load workers from this binary.
    let own_exe = std::env::current_exe().expect("the suite's own path");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let figures = match only.as_deref() {
        Some("scale") => runtime.block_on(figures::directory_scale(&sizes)),
        Some("round-trip") => runtime.block_on(figures::round_trip(&sizes)),
        Some("cold") => runtime.block_on(figures::cold_send(&sizes)),
        Some("directory") => runtime.block_on(figures::directory(&sizes)),
        Some("cluster") => runtime.block_on(figures::cluster(&sizes)),
        Some("directory-sizes") => runtime.block_on(figures::directory_sizes(&sizes)),
        Some("window") => figures::window(&sizes),
        Some("files") => match bin.as_deref() {
            Some(bin) if bin.exists() => runtime.block_on(figures::file_transfer(&sizes, bin)),
            _ => {
                eprintln!("build the binaries first: cargo build --release --workspace");
                std::process::exit(2);
            }
        },
        Some("web") => match bin.as_deref() {
            Some(bin) if bin.exists() => runtime.block_on(figures::web(&sizes, bin)),
            _ => {
                eprintln!("build the binaries first: cargo build --release --workspace");
                std::process::exit(2);
            }
        },
        Some("tunnels") => match bin.as_deref() {
            Some(bin) if bin.exists() => runtime.block_on(figures::tunnels(&sizes, bin)),
            _ => {
                eprintln!("build the binaries first: cargo build --release --workspace");
                std::process::exit(2);
            }
        },
        Some("held") => match bin.as_deref().map(|b| b.with_file_name("rendezvous")) {
            Some(node) if node.exists() => {
                runtime.block_on(figures::held_connections(&sizes, &node, Some(&own_exe)))
            }
            _ => {
                eprintln!("build the binaries first: cargo build --release --workspace");
                std::process::exit(2);
            }
        },
        Some(other) => {
            eprintln!(
                "unknown --only {other}: scale, round-trip, cold, directory, directory-sizes, cluster, window, web, files, tunnels or held"
            );
            std::process::exit(2);
        }
        None => runtime.block_on(figures::run_all(&sizes, bin.as_deref(), Some(&own_exe))),
    };
    println!("{}", figures::table(&figures));
    let json = serde_json::to_string_pretty(&figures).expect("json");
    if let Err(e) = std::fs::write(&json_path, json) {
        eprintln!("cannot write {}: {e}", json_path.display());
    } else {
        println!("figures written to {}", json_path.display());
    }
}
