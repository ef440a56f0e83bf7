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
        rate: 2000.0,
        drain: Box::new(|_, _| 500.0),
        grow: None,
        keys: None,
        refresh: Duration::from_secs(1),
        collect_delay: Duration::from_millis(50),
        payload: 100,
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
    ]
}
