//! The fault matrix of `docs/reliability.md`, measured on the embedded cluster.
//!
//! For each fault: a 6 s load (300 keyless + 200 keyed msg/s) through an idempotent smart
//! producer, with consumers keeping up on every partition but one lagging partition; the fault
//! is on from 1 s to 3.5 s. Afterwards the whole topic is read back and every message
//! accounted for. Prints one markdown row per fault.
//!
//! ```text
//! cargo run --release --example fault_matrix
//! ```
#![expect(
    clippy::print_stdout,
    reason = "a program that reports on its standard output"
)]

use std::time::Duration;

use ksp_testkit::faults::{Fault, FaultRun, FaultSpec, QueueBurst};

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e3)
}

fn behaviour(fault: Fault, long: bool) -> &'static str {
    match (fault, long) {
        (Fault::None, _) => "routes by fresh health",
        (Fault::BrokerDown, false) => {
            "stops routing to the down broker's partitions at the next refresh, moves the keys \
             living there; messages already queued for it are delivered when it is back"
        }
        (Fault::BrokerDown, true) => {
            "as above; messages stuck on the down broker fail at message.timeout.ms (2 s here) \
             and are handed back"
        }
        (Fault::ListOffsetsErrors | Fault::OffsetFetchErrors | Fault::MetadataErrors, _) => {
            "retries with backoff inside each refresh, keeps the last health, marks it stale \
             after max_staleness (librdkafka's partitioner decides), recovers by itself"
        }
        (Fault::SlowBrokers, _) => {
            "collections time out and health turns stale (librdkafka decides); sends slow down \
             with the brokers but are delivered"
        }
        (Fault::LeaderMoves, _) => {
            "follows the new leaders at the next refresh; health never stale"
        }
        _ => "",
    }
}

fn row(name: &str, run: &FaultRun, long: bool) {
    let s = run.summary();
    println!(
        "| {name} | {} | {} | {} | {} | **{}** | {} | {} / {} / {} | {}/{} | {} |",
        behaviour(run.spec.fault, long),
        s.sent,
        s.delivered,
        s.failed,
        s.lost,
        s.duplicated,
        ms(s.latency.0),
        ms(s.latency.1),
        ms(s.latency.2),
        s.steered,
        s.during,
        ms(run.health.stale_time()),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!(
        "| fault | what the library does | sent | delivered | failed, handed back | lost | \
         duplicated | send latency during the fault, ms (p50 / p99 / max) | routed by health \
         during the fault | health stale for, ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for fault in Fault::ALL {
        let run = FaultSpec::new(fault).run().await?;
        row(&fault.to_string(), &run, false);
    }
    let long = FaultSpec::new(Fault::BrokerDown)
        .timing(
            Duration::from_secs(4),
            Duration::from_secs(1),
            Duration::from_secs(5),
        )
        .message_timeout(Duration::from_secs(2))
        .run()
        .await?;
    row(
        "a broker down for 5 s, longer than message.timeout.ms",
        &long,
        true,
    );

    let burst = QueueBurst::new(Duration::from_millis(200)).run().await?;
    let failed = burst.sends.iter().filter(|s| s.result.is_err()).count();
    let handed_back = burst
        .sends
        .iter()
        .filter(|s| matches!(&s.result, Err((true, Some(p))) if *p == s.payload))
        .count();
    let mut latencies: Vec<Duration> = burst.sends.iter().map(|s| s.latency).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let delivered = burst.sends.len() - failed;
    let lost = delivered.abs_diff(burst.consumed.len());
    println!(
        "| local queue full (burst of {} into 50 places, 300 ms broker RTT, queue_timeout 200 ms) \
         | waits for room (woken by delivery reports) up to queue_timeout, then QueueFull with \
         the message handed back ({handed_back} of {failed}); never written | {} | {delivered} \
         | {failed} | **{lost}** | 0 | {} / {} / {} | n/a | n/a |",
        burst.sends.len(),
        burst.sends.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(latencies[latencies.len() - 1]),
    );
    println!();
    println!(
        "lost = delivered but not in the topic, or never resolved; duplicated = in the topic more than once."
    );
    Ok(())
}
