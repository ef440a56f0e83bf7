//! The chaos soak, one minute with a fixed seed: every kind of fault, overlapping, under load
//! from three instances; every promise kept. The 30-minute run is `just soak`.

use std::time::Duration;

use ksp_testkit::soak::{BrokerPlacement, DEFAULT_SEED, FaultKind, SoakSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_minute_of_random_overlapping_faults_keeps_every_promise() {
    // The broker in a child process, as the soak example runs it.
    let report = SoakSpec::new(Duration::from_secs(60))
        .seed(DEFAULT_SEED)
        .broker(BrokerPlacement::process(
            env!("CARGO_BIN_EXE_ksp-soak-broker"),
            &[],
        ))
        .run()
        .await
        .unwrap();
    // Not vacuous: every kind of fault ran, the queue filled, keys moved (strict ones too),
    // and some episode took routing off health.
    for kind in FaultKind::ALL {
        assert!(
            report.faults.contains_key(&kind),
            "{kind} was never injected\n{report}"
        );
    }
    assert!(report.sent > 30_000, "{report}");
    assert!(
        report.queue_full > 0,
        "the local queue never filled\n{report}"
    );
    assert!(report.accounting.moved_keys > 0, "no key moved\n{report}");
    assert!(
        report.accounting.strict_moved_keys > 0,
        "no strict key moved\n{report}"
    );
    assert!(report.recoveries.iter().any(|r| r.degraded), "{report}");
    assert!(
        report.broker_rss.iter().any(|&(_, bytes)| bytes > 0),
        "the broker's process was not sampled\n{report}"
    );
    assert!(report.all_kept(), "{report}");
}
