//! The Grafana dashboard's main series (`docs/grafana/`) during the embedded demo, drawn
//! without Grafana: `ksp-bench dashboard` writes `docs/img/dashboard.svg`.
//!
//! The library's metrics are rendered by `metrics-exporter-prometheus` once per second of the
//! demo's smart phase (one consumer at a tenth of the others' speed) and read back: what a
//! Prometheus scrape of `examples/prometheus.rs` would return.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ksp_testkit::demo::{DemoConfig, run_embedded};
use metrics_exporter_prometheus::PrometheusBuilder;
use plotters::prelude::*;

/// The series at one moment.
#[derive(Debug, Default, Clone)]
struct Sample {
    seconds: f64,
    lag: BTreeMap<i32, f64>,
    time_lag: BTreeMap<i32, f64>,
    routable: Option<f64>,
    partitions: Option<f64>,
    /// `ksp_messages_total` by route (fallbacks by reason), cumulative.
    sends: BTreeMap<String, u64>,
}

/// The series of one Prometheus exposition (what a scrape returns).
fn sample(exposition: &str, seconds: f64) -> Sample {
    let mut out = Sample {
        seconds,
        ..Sample::default()
    };
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let label = |wanted: &str| {
            labels.trim_end_matches('}').split(',').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == wanted).then(|| v.trim_matches('"').to_owned())
            })
        };
        let partition = label("partition").and_then(|p| p.parse::<i32>().ok());
        match name {
            "ksp_partition_lag" => {
                if let Some(p) = partition {
                    out.lag.insert(p, value);
                }
            }
            "ksp_partition_time_lag_seconds" => {
                if let Some(p) = partition
                    && value.is_finite()
                {
                    out.time_lag.insert(p, value);
                }
            }
            "ksp_healthy_partitions" => out.routable = Some(value),
            "ksp_partitions" => out.partitions = Some(value),
            "ksp_messages_total" => {
                let route = match (label("route"), label("fallback")) {
                    (Some(route), Some(reason)) if !reason.is_empty() => {
                        format!("{route}: {reason}")
                    }
                    (Some(route), _) => route,
                    _ => continue,
                };
                *out.sends.entry(route).or_default() += value as u64;
            }
            _ => {}
        }
    }
    out
}

/// Runs the demo's smart phase for `seconds`, samples the series every second and draws them
/// into `path`. Returns a one-paragraph summary.
pub async fn run(seconds: u64, path: &Path) -> anyhow::Result<String> {
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let mut config = DemoConfig::default();
    config.duration = Duration::from_secs(seconds);
    let mut samples = Vec::new();
    let mut started: Option<Instant> = None;
    let mut smart = true;
    // The demo reports once per second: the smart phase first, then the plain producer's
    // (which exports nothing of ours).
    let mut out = |line: &str| {
        if line.starts_with("\nplain:") {
            smart = false;
        }
        if smart {
            let t0 = *started.get_or_insert_with(Instant::now);
            let seconds = t0.elapsed().as_secs_f64();
            // Several lines can come at once (the phase's header, its summary): one sample
            // per half second at most, so rates are not taken over an instant.
            if samples
                .last()
                .is_none_or(|s: &Sample| seconds - s.seconds >= 0.5)
            {
                samples.push(sample(&prometheus.render(), seconds));
            }
        }
    };
    let summary = run_embedded(&config, &mut out).await?;
    draw(path, &samples, config.slow_partition)?;
    Ok(format!(
        "{} samples over {seconds} s of the demo's smart phase; partition {} (slow) received \
         {:.1} % of the messages (plain producer: {:.1} %); plot: {}",
        samples.len(),
        config.slow_partition,
        share(&summary.smart.delivered, config.slow_partition) * 100.0,
        share(&summary.plain.delivered, config.slow_partition) * 100.0,
        path.display()
    ))
}

/// A named line of points, drawn thick and red when highlighted.
type Line = (String, Vec<(f64, f64)>, bool);

/// Partition `p`'s share of `delivered`.
fn share(delivered: &[u64], p: i32) -> f64 {
    let total: u64 = delivered.iter().sum();
    let mine = usize::try_from(p)
        .ok()
        .and_then(|p| delivered.get(p))
        .copied()
        .unwrap_or(0);
    if total == 0 {
        0.0
    } else {
        mine as f64 / total as f64
    }
}

/// One panel: each named line over time.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    lines: &[Line],
    seconds: f64,
) -> anyhow::Result<()> {
    let peak = lines
        .iter()
        .flat_map(|(_, points, _)| points.iter().map(|&(_, y)| y))
        .fold(1.0_f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..seconds, 0.0..peak * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if peak < 10.0 {
                format!("{y:.1}")
            } else {
                format!("{y:.0}")
            }
        })
        .light_line_style(WHITE)
        .draw()?;
    for (i, (name, points, highlight)) in lines.iter().enumerate() {
        let style = ShapeStyle {
            color: if *highlight {
                RED.to_rgba()
            } else {
                Palette99::pick(i).mix(0.7)
            },
            filled: false,
            stroke_width: if *highlight { 3 } else { 1 },
        };
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

fn per_partition(
    samples: &[Sample],
    series: impl Fn(&Sample) -> &BTreeMap<i32, f64>,
    slow: i32,
) -> Vec<Line> {
    let partitions: std::collections::BTreeSet<i32> = samples
        .iter()
        .flat_map(|s| series(s).keys().copied())
        .collect();
    partitions
        .into_iter()
        .map(|p| {
            let points = samples
                .iter()
                .filter_map(|s| series(s).get(&p).map(|&v| (s.seconds, v)))
                .collect();
            (format!("partition {p}"), points, p == slow)
        })
        .collect()
}

fn draw(path: &Path, samples: &[Sample], slow: i32) -> anyhow::Result<()> {
    let seconds = samples.last().map_or(1.0, |s| s.seconds.max(1.0));
    let root = SVGBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((2, 2));

    panel(
        &areas[0],
        "Lag per partition (ksp_partition_lag)",
        "messages",
        &per_partition(samples, |s| &s.lag, slow),
        seconds,
    )?;
    panel(
        &areas[1],
        "Predicted time-lag (ksp_partition_time_lag_seconds)",
        "seconds",
        &per_partition(samples, |s| &s.time_lag, slow),
        seconds,
    )?;
    let gauge = |f: fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter_map(|s| f(s).map(|v| (s.seconds, v)))
            .collect()
    };
    panel(
        &areas[2],
        "Routable partitions (ksp_healthy_partitions of ksp_partitions)",
        "partitions",
        &[
            ("routable".to_owned(), gauge(|s| s.routable), true),
            ("all".to_owned(), gauge(|s| s.partitions), false),
        ],
        seconds,
    )?;
    let routes: std::collections::BTreeSet<&String> =
        samples.iter().flat_map(|s| s.sends.keys()).collect();
    let rates = routes
        .into_iter()
        .map(|route| {
            let points = samples
                .windows(2)
                .filter(|w| w[1].seconds > w[0].seconds)
                .map(|w| {
                    let count = |s: &Sample| s.sends.get(route).copied().unwrap_or(0);
                    let sent = count(&w[1]).saturating_sub(count(&w[0]));
                    (w[1].seconds, sent as f64 / (w[1].seconds - w[0].seconds))
                })
                .collect();
            (route.clone(), points, false)
        })
        .filter(|(_, points, _): &Line| points.iter().any(|&(_, rate)| rate > 0.0))
        .collect::<Vec<_>>();
    panel(
        &areas[3],
        "Sends by route (rate of ksp_messages_total)",
        "messages/s",
        &rates,
        seconds,
    )?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exposition_is_read_into_the_panels_series() {
        let text = "# TYPE ksp_partition_lag gauge\n\
            ksp_partition_lag{group=\"g\",topic=\"t\",partition=\"3\"} 207\n\
            ksp_partition_lag{group=\"g\",topic=\"t\",partition=\"0\"} 40\n\
            ksp_partition_time_lag_seconds{group=\"g\",topic=\"t\",partition=\"3\"} 2.5\n\
            ksp_partition_time_lag_seconds{group=\"g\",topic=\"t\",partition=\"0\"} NaN\n\
            ksp_healthy_partitions{group=\"g\",topic=\"t\"} 7\n\
            ksp_partitions{group=\"g\",topic=\"t\"} 8\n\
            ksp_messages_total{route=\"sticky\",fallback=\"\"} 1900\n\
            ksp_messages_total{route=\"fallback\",fallback=\"no_health\"} 120\n\
            ksp_refresh_duration_seconds{group=\"g\",quantile=\"0.5\"} 0.003\n";
        let s = sample(text, 1.5);
        assert_eq!(s.seconds, 1.5);
        assert_eq!(s.lag, BTreeMap::from([(0, 40.0), (3, 207.0)]));
        assert_eq!(s.time_lag, BTreeMap::from([(3, 2.5)]));
        assert_eq!((s.routable, s.partitions), (Some(7.0), Some(8.0)));
        assert_eq!(
            s.sends,
            BTreeMap::from([
                ("fallback: no_health".to_owned(), 120),
                ("sticky".to_owned(), 1900)
            ])
        );
    }
}
