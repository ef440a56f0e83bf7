//! The chaos soak, one minute with a fixed seed: every kind of fault, overlapping, under load
//! from three instances; every promise kept. The 30-minute run is `just soak`. Linux: memory
//! is read from `/proc`.

use std::time::Duration;

use ksp_testkit::ClusterProcess;
use ksp_testkit::soak::{BrokerPlacement, DEFAULT_SEED, FaultKind, SoakSpec};

const BROKER: &str = env!("CARGO_BIN_EXE_ksp-soak-broker");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_minute_of_random_overlapping_faults_keeps_every_promise() {
    // The broker in a child process, as the soak example runs it.
    let report = SoakSpec::new(Duration::from_secs(60))
        .seed(DEFAULT_SEED)
        .broker(BrokerPlacement::process(BROKER, &[]))
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
    // glibc's count of the heap in use, which the memory line judges.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    assert!(
        report.heap.len() >= 50 && report.heap.iter().all(|(_, h)| h.in_use > 0),
        "the heap in use was not sampled every second\n{report}"
    );
    assert!(report.all_kept(), "{report}");
    // The promise lines of a run that kept them (shown with `--success-output`).
    eprintln!("{report}");
}

/// The soak's broker process applies the changes it is sent and refuses a wrong one, naming it.
#[test]
fn the_broker_process_answers_each_change_and_refuses_a_wrong_one() {
    let broker = ClusterProcess::start(BROKER.as_ref(), &[]).unwrap();
    assert!(
        broker.bootstrap_servers().starts_with("127.0.0.1:"),
        "{broker:?}"
    );
    for change in [
        "down 1",
        "up 1",
        "leader 0 2",
        "errors produce",
        "clear produce",
        "rtt 3 0",
    ] {
        broker.ask(change).unwrap();
    }
    let unknown = broker.ask("down 9").unwrap_err().to_string();
    assert!(
        unknown.contains("asked `down 9`: the broker change `down 9`"),
        "{unknown}"
    );
    let garbled = broker.ask("reboot 1").unwrap_err().to_string();
    assert!(garbled.contains("no such change"), "{garbled}");
    assert!(broker.rss_bytes() > 0);
}
