//! The simulated scenarios of `docs/benchmarks.md`.

use std::time::Duration;

use crate::sim::{Keys, Scenario};

/// 2000 msg/s over 8 partitions whose consumers read 500 msg/s each, lag read every second
/// (published 50 ms later), 100-byte messages, for `seconds`.
fn base(name: &'static str, title: &'static str, seconds: u32) -> Scenario {
    Scenario {
        name,
        title,
        seconds,
        partitions: 8,
        rate: Box::new(|_| 2000.0),
        drain: Box::new(|_, _| 500.0),
        grow: None,
        keys: None,
        refresh: Duration::from_secs(1),
        collect_delay: Duration::from_millis(50),
        payload: 100,
        commit_interval: Duration::from_millis(500),
        watched: vec![3],
    }
}

/// Every scenario, `seconds` long each.
pub fn all(seconds: u32) -> Vec<Scenario> {
    vec![
        Scenario {
            drain: Box::new(|p, _| if p == 3 { 50.0 } else { 500.0 }),
            ..base(
                "one_slow",
                "one consumer at 10 % speed (partition 3)",
                seconds,
            )
        },
        Scenario {
            drain: Box::new(|p, _| if p == 3 { 0.0 } else { 500.0 }),
            ..base("stalled", "one consumer stalled (partition 3)", seconds)
        },
        Scenario {
            // 7 × 200 + 1000 = 2400 msg/s of capacity for 2000 msg/s: routing everything to
            // the one fast partition would overload it (herding).
            drain: Box::new(|p, _| if p == 0 { 1000.0 } else { 200.0 }),
            watched: vec![0],
            ..base(
                "seven_slow",
                "7 of 8 consumers slow, one fast (partition 0)",
                seconds,
            )
        },
        Scenario {
            drain: Box::new(|p, t| {
                if p == 3 && ((t / 5.0) as u64).is_multiple_of(2) {
                    50.0
                } else {
                    500.0
                }
            }),
            ..base(
                "flapping",
                "partition 3's consumer alternates 10 % and full speed every 5 s",
                seconds,
            )
        },
        Scenario {
            // 7 × 260 + 50 = 1870 msg/s of capacity for 2000 msg/s until 4 partitions with
            // fast consumers are added halfway.
            drain: Box::new(|p, _| match p {
                3 => 50.0,
                8.. => 400.0,
                _ => 260.0,
            }),
            grow: Some((f64::from(seconds) / 2.0, 12)),
            watched: vec![3, 8],
            ..base(
                "growing",
                "consumers short of capacity; 4 partitions with fast consumers added halfway",
                seconds,
            )
        },
        Scenario {
            drain: Box::new(|p, _| if p == 3 { 50.0 } else { 500.0 }),
            keys: Some(Keys {
                count: 10_000,
                exponent: 1.0,
            }),
            ..base(
                "keyed_skew",
                "keyed traffic, Zipf over 10 000 keys; partition 3 at 10 % speed",
                seconds,
            )
        },
        Scenario {
            // 1200 msg/s of capacity for 1000 msg/s, 42 % of it on partition 0.
            rate: Box::new(|_| 1000.0),
            drain: Box::new(|p, _| if p == 0 { 500.0 } else { 100.0 }),
            watched: vec![0],
            ..base(
                "fast_one",
                "one consumer at 500 msg/s, seven at 100 msg/s; 1000 msg/s produced",
                seconds,
            )
        },
        Scenario {
            // 500, 450, … 150 msg/s: 2600 msg/s of capacity for 2000.
            drain: Box::new(|p, _| 500.0 - 50.0 * p as f64),
            watched: vec![7],
            ..base(
                "ladder",
                "a ladder of consumer speeds: 100 %, 90 %, … 30 % of 500 msg/s",
                seconds,
            )
        },
        Scenario {
            partitions: 12,
            drain: Box::new(|p, _| if p == 5 { 125.0 } else { 500.0 }),
            watched: vec![5],
            ..base(
                "one_of_twelve",
                "12 partitions, one consumer at 25 % speed (partition 5)",
                seconds,
            )
        },
        Scenario {
            // 2 × 1500 + 6 × 50 = 3300 msg/s of capacity for 2000: the two fast partitions
            // can take everything.
            drain: Box::new(|p, _| if p < 2 { 1500.0 } else { 50.0 }),
            watched: vec![0, 2],
            ..base(
                "two_healthy",
                "2 of 8 consumers healthy (1500 msg/s each), six at 50 msg/s",
                seconds,
            )
        },
        Scenario {
            // Partition 3 slows from 500 to 50 msg/s over two minutes, from 60 s on.
            drain: Box::new(|p, t| {
                if p == 3 {
                    500.0 - 450.0 * ((t - 60.0) / 120.0).clamp(0.0, 1.0)
                } else {
                    500.0
                }
            }),
            ..base(
                "slowing",
                "partition 3's consumer slows from 500 to 50 msg/s over two minutes",
                seconds,
            )
        },
        Scenario {
            // 3750 msg/s of capacity; the load doubles from 1500 to 3000 msg/s for 30 s.
            rate: Box::new(move |t| {
                let at = f64::from(seconds) * 0.4;
                if (at..at + 30.0).contains(&t) {
                    3000.0
                } else {
                    1500.0
                }
            }),
            drain: Box::new(|p, _| if p == 3 { 250.0 } else { 500.0 }),
            ..base(
                "load_doubling",
                "the load doubles (1500 to 3000 msg/s) for 30 s; partition 3 at half speed",
                seconds,
            )
        },
    ]
}
