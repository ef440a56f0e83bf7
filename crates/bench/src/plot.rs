//! Lag-over-time plots, one panel per policy.

use std::path::Path;

use plotters::prelude::*;

use crate::sim::{Outcome, Scenario};

/// Draws every partition's lag over time, one panel per outcome, into an SVG file.
pub fn lag_panels(path: &Path, scenario: &Scenario, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let width = 420 * outcomes.len() as u32;
    let root = SVGBackend::new(path, (width, 320)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, outcomes.len()));
    for (panel, outcome) in panels.iter().zip(outcomes) {
        let peak = outcome
            .lags
            .iter()
            .flat_map(|(_, l)| l.iter().copied())
            .max()
            .unwrap_or(0)
            .max(10) as f64;
        let seconds = f64::from(scenario.seconds);
        let mut chart = ChartBuilder::on(panel)
            .caption(outcome.policy.label(), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..seconds, 0.0..peak * 1.05)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("lag (messages)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE)
            .draw()?;
        let partitions = outcome.lags.iter().map(|(_, l)| l.len()).max().unwrap_or(0);
        for p in 0..partitions {
            let watched = scenario.watched.contains(&p);
            let color = if watched {
                RED.to_rgba()
            } else {
                Palette99::pick(p).mix(0.6)
            };
            let style = ShapeStyle {
                color,
                filled: false,
                stroke_width: if watched { 3 } else { 1 },
            };
            let series = outcome
                .lags
                .iter()
                .filter_map(|(t, l)| l.get(p).map(|&lag| (*t, lag as f64)));
            let drawn = chart.draw_series(LineSeries::new(series, style))?;
            if watched {
                drawn
                    .label(format!("partition {p}"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
