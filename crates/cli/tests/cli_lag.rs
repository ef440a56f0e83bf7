//! The `ksp` binary against the embedded cluster.

use std::process::Command;

use ksp_testkit::{LagScenario, MockKafka};

fn ksp(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ksp"))
        .args(args)
        .output()
        .expect("ksp runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_prints_each_partition_with_its_lag_and_verdict() {
    let kafka = MockKafka::start(1).unwrap();
    LagScenario::new("orders", 4)
        .lag(2, 5000)
        .create(&kafka, "g")
        .await
        .unwrap();
    let bootstrap = kafka.bootstrap_servers().to_owned();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        ksp(&[
            "lag",
            "--bootstrap",
            &bootstrap,
            "--group",
            "g",
            "--topic",
            "orders",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("3 of 4 partitions routable"), "{out}");
    let row = |p: &str| {
        out.lines()
            .find(|l| l.split(['|', '│']).nth(1).is_some_and(|c| c.trim() == p))
            .unwrap_or_else(|| panic!("no row for partition {p}: {out}"))
            .to_owned()
    };
    assert!(
        row("2").contains("5000") && row("2").contains("HOT"),
        "{out}"
    );
    assert!(row("0").contains("healthy"), "{out}");
    assert!(
        out.contains("time-lag") && out.contains("capacity/s") && out.contains("share"),
        "{out}"
    );
    // Nothing is measured yet in one read: shares by score, the hot partition gets none.
    assert!(out.contains("shares by score"), "{out}");
    assert!(row("2").contains(" 0% "), "{out}");

    let bootstrap = kafka.bootstrap_servers().to_owned();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        ksp(&[
            "watch",
            "--bootstrap",
            &bootstrap,
            "--group",
            "g",
            "--topic",
            "orders",
            "--interval",
            "100ms",
            "--count",
            "2",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        out.matches("3 of 4 partitions routable").count(),
        2,
        "{out}"
    );
}

#[test]
fn bad_arguments_are_explained() {
    let (ok, _, err) = ksp(&[
        "lag",
        "--bootstrap",
        "x",
        "--group",
        "g",
        "--topic",
        "t",
        "--calculator",
        "median",
    ]);
    assert!(!ok);
    assert!(err.contains("median"), "{err}");
}

/// Bug: `--interval` and `--timeout` took any duration, and one too large to add to the clock
/// (`ksp watch --interval 10000000000000000000s` in a terminal, `ksp lag --timeout` likewise)
/// panicked. Out-of-range durations are now refused by name before anything runs.
#[test]
fn durations_out_of_range_are_refused_by_name() {
    let huge = "10000000000000000000s";
    let target = ["-b", "127.0.0.1:1", "-g", "g", "-t", "orders"];
    for (command, flag, value) in [
        ("watch", "--interval", huge),
        ("watch", "--interval", "0s"),
        ("lag", "--timeout", huge),
        ("lag", "--window", huge),
    ] {
        let mut args = vec![command, flag, value, "--count", "1"];
        if command == "lag" {
            args.truncate(3);
        }
        args.extend(target);
        let out = Command::new(env!("CARGO_BIN_EXE_ksp"))
            .args(&args)
            .output()
            .expect("ksp runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(err.contains("between"), "{args:?}: {err}");
    }
}
