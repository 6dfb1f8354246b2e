//! `--plot`: the rows as SVG bar charts, one column per scenario: successful requests per
//! second above, p99 latency below, one bar per strategy (colours in the legend on top).

use std::path::Path;

use anyhow::{anyhow, Context};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::Row;

/// Width of one scenario's column, pixels.
const COLUMN: u32 = 380;
/// Height of one chart, pixels.
const CHART: u32 = 330;
/// Height of the legend strip, pixels.
const LEGEND: u32 = 44;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Writes the charts of `rows` to `path` (SVG).
///
/// # Errors
/// When the file cannot be written.
pub fn write_svg(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    draw(path, rows)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("plot to {}", path.display()))
}

/// Strategies and scenarios in the order they first appear in `rows`.
fn in_order<'r>(rows: &'r [Row], key: impl Fn(&'r Row) -> &'r str) -> Vec<&'r str> {
    let mut seen: Vec<&str> = Vec::new();
    for row in rows {
        let name = key(row);
        if !seen.contains(&name) {
            seen.push(name);
        }
    }
    seen
}

fn draw(path: &Path, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    let strategies = in_order(rows, |row| row.strategy.as_str());
    let scenarios = in_order(rows, |row| row.scenario.as_str());
    let columns = u32::try_from(scenarios.len().max(1))?;
    let width = (COLUMN * columns).max(2 * COLUMN);
    let root = SVGBackend::new(path, (width, LEGEND + 2 * CHART)).into_drawing_area();
    root.fill(&WHITE)?;
    let (legend, body) = root.split_vertically(LEGEND);
    let modes = in_order(rows, |row| row.mode.as_str()).join(", ");
    legend.draw(&Text::new(
        format!("stock-load ({modes})"),
        (10, 14),
        ("sans-serif", 16),
    ))?;
    let mut x = 220;
    for (colour, name) in strategies.iter().enumerate() {
        legend.draw(&Rectangle::new(
            [(x, 14), (x + 14, 28)],
            Palette99::pick(colour).filled(),
        ))?;
        legend.draw(&Text::new(
            (*name).to_owned(),
            (x + 20, 14),
            ("sans-serif", 15),
        ))?;
        x += 30 + 9 * i32::try_from(name.len())?;
    }
    let panels = body.split_evenly((2, scenarios.len().max(1)));
    for (column, scenario) in scenarios.iter().enumerate() {
        let bars = |value: fn(&Row) -> f64| -> Vec<(usize, f64)> {
            strategies
                .iter()
                .enumerate()
                .filter_map(|(slot, strategy)| {
                    rows.iter()
                        .find(|row| row.scenario == *scenario && row.strategy == *strategy)
                        .map(|row| (slot, value(row)))
                })
                .collect()
        };
        let slots = strategies.len();
        let ok = bars(|row| row.ok_per_s);
        panel(&panels[column], &format!("{scenario}: ok/s"), slots, &ok)?;
        let p99 = bars(|row| row.p99_ms);
        let below = &panels[scenarios.len() + column];
        panel(below, &format!("{scenario}: p99 ms"), slots, &p99)?;
    }
    root.present()?;
    Ok(())
}

/// One chart: a bar per `(slot, value)` among `slots`, coloured by slot, value on top.
fn panel(
    area: &Area<'_>,
    title: &str,
    slots: usize,
    bars: &[(usize, f64)],
) -> Result<(), Box<dyn std::error::Error>> {
    let highest = bars.iter().map(|&(_, v)| v).fold(0.0_f64, f64::max);
    let top = if highest > 0.0 { highest * 1.2 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(8)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..slots.max(1) as f64, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .draw()?;
    chart.draw_series(bars.iter().map(|&(slot, value)| {
        let x = slot as f64;
        Rectangle::new(
            [(x + 0.15, 0.0), (x + 0.85, value)],
            Palette99::pick(slot).filled(),
        )
    }))?;
    let label =
        TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(bars.iter().map(|&(slot, value)| {
        let text = if value >= 100.0 {
            format!("{value:.0}")
        } else {
            format!("{value:.2}")
        };
        Text::new(text, (slot as f64 + 0.5, value), label.clone())
    }))?;
    Ok(())
}
