//! The PNG: arrival rate, backlog and replicas over time, one line per policy.
//!
//! Text is rendered with plotters' `ab_glyph` backend and DejaVu Sans embedded from the
//! `dejavu` crate, so drawing needs no system fonts (none exist in a distroless image or CI).

use std::{path::Path, sync::Once};

use plotters::{
    coord::types::RangedCoordf64,
    prelude::*,
    style::{FontStyle, register_font},
};

use super::{ScenarioRun, SimulateError};

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 1050;

fn color(policy: &str) -> RGBColor {
    match policy {
        "streamq" => RGBColor(31, 119, 180),
        "keda" => RGBColor(214, 39, 40),
        "keda-best" => RGBColor(255, 127, 14),
        "wpa" => RGBColor(44, 160, 44),
        _ => RGBColor(90, 90, 90),
    }
}

fn register_embedded_font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the embedded DejaVu Sans font is not a valid font".to_owned());
    });
    result
}

pub fn draw(path: &Path, result: &ScenarioRun) -> Result<(), SimulateError> {
    draw_inner(path, result).map_err(|why| SimulateError::Plot {
        path: path.to_owned(),
        why,
    })
}

type Panel<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type Pick = fn(&super::engine::Point) -> f64;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn draw_inner(path: &Path, result: &ScenarioRun) -> Result<(), String> {
    register_embedded_font()?;
    let scenario = &result.scenario;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            &format!("{}: target {}", scenario.name, scenario.slo.target_latency),
            (FONT, 24),
        )
        .map_err(err)?;
    let panels = root.split_evenly((3, 1));
    arrival_panel(&panels[0], result)?;
    let panels_of_policies: [(&str, Pick); 2] = [
        ("backlog (messages waiting)", |p| p.backlog as f64),
        ("replicas (pods, starting included)", |p| f64::from(p.replicas)),
    ];
    for (panel, (caption, pick)) in panels[1..].iter().zip(panels_of_policies) {
        policy_panel(panel, result, caption, pick)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Arrival rate: configured, and what arrived (the same for every policy: common random
/// numbers), averaged over 10 s so that the Poisson noise does not hide the shape.
fn arrival_panel(panel: &Panel<'_>, result: &ScenarioRun) -> Result<(), String> {
    let scenario = &result.scenario;
    let duration = scenario.duration_secs();
    let configured: Vec<(f64, f64)> = (0..=1000)
        .map(|i| {
            let t = duration * f64::from(i) / 1000.0;
            (t, scenario.rate_at(t))
        })
        .collect();
    let arrived: Vec<(f64, f64)> = result
        .runs
        .first()
        .map(|run| {
            run.series
                .chunks(10)
                .map(|c| {
                    let t = c.last().map_or(0.0, |p| p.t);
                    let n: u32 = c.iter().map(|p| p.arrivals).sum();
                    (t, f64::from(n) / c.len() as f64)
                })
                .collect()
        })
        .unwrap_or_default();
    let rate_max = configured.iter().chain(&arrived).map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(panel)
        .caption("arrival rate (messages/s)", (FONT, 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..duration, 0f64..rate_max)
        .map_err(err)?;
    chart.configure_mesh().label_style((FONT, 13)).draw().map_err(err)?;
    let grey = RGBColor(120, 120, 120);
    chart
        .draw_series(LineSeries::new(arrived, grey.stroke_width(1)))
        .map_err(err)?
        .label("arrived (10 s mean)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(configured, BLACK.stroke_width(2)))
        .map_err(err)?
        .label("scenario rate")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    draw_legend(&mut chart)
}

/// One line per policy of the figure `pick` takes from each point.
fn policy_panel(panel: &Panel<'_>, result: &ScenarioRun, caption: &str, pick: Pick) -> Result<(), String> {
    let duration = result.scenario.duration_secs();
    let y_max = result
        .runs
        .iter()
        .flat_map(|r| r.series.iter().map(pick))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(panel)
        .caption(caption, (FONT, 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..duration, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .label_style((FONT, 13))
        .x_desc("time (s)")
        .draw()
        .map_err(err)?;
    for run in &result.runs {
        let c = color(&run.summary.policy);
        let label = match run.summary.param {
            Some(p) => format!("{} (lagCount {p})", run.summary.policy),
            None => run.summary.policy.clone(),
        };
        chart
            .draw_series(LineSeries::new(
                run.series.iter().map(|p| (p.t, pick(p))),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    draw_legend(&mut chart)
}

type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn draw_legend<'b>(chart: &mut Chart<'b, 'b>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)
}
