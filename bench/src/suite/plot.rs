//! `--plot FILE.svg`: the ratio table as bars and the scale curves.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::modes::Mode;
use super::report::{Figure, JUDGED, Results};

/// The table's figures as drawn, with a short label and the targets over
/// nftables and over routing (drawn as a mark on the bar).
const BARS: [(Figure, &str, [Option<f64>; 2]); 7] = [
    (Figure::UdpPps, "UDP pps", [Some(1.3), Some(1.0)]),
    (Figure::CpuPerPacket, "CPU/pkt", [Some(0.75), None]),
    (Figure::Tcp1, "TCP 1", [None, Some(0.97)]),
    (Figure::Tcp4, "TCP 4", [None, Some(0.97)]),
    (Figure::ConnRate, "conn/s spread", [None, None]),
    (
        Figure::ServerFirstRate,
        "conn/s server-first",
        [Some(1.25), Some(0.95)],
    ),
    (Figure::ServerFirstP99, "p99 connect", [None, Some(1.2)]),
];
const OVER: [(Mode, RGBColor); 2] = [
    (Mode::Nftables, RGBColor(0xd6, 0x60, 0x4d)),
    (Mode::Routing, RGBColor(0x43, 0x93, 0xc3)),
];
const SCALE_MODES: [(Mode, RGBColor); 2] = [
    (Mode::Nftables, RGBColor(0xd6, 0x60, 0x4d)),
    (JUDGED, RGBColor(0x1b, 0x9e, 0x77)),
];

/// A mode's points (live sessions, figure) in its colour.
type Curve = (Mode, RGBColor, Vec<(f64, f64)>);

pub fn draw(path: &Path, r: &Results) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(460);
    ratios(&top, r)?;
    let panels = bottom.split_evenly((1, 2));
    scale(&panels[0], r, Figure::UdpPps, "UDP 64 B, Mpps", 1e-6)?;
    scale(
        &panels[1],
        r,
        Figure::ServerFirstRate,
        "new TCP conn/s, server-first",
        1.0,
    )?;
    root.present().map_err(err)?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw the plot: {e}")
}

fn ratios<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    r: &Results,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let values: Vec<Vec<Option<f64>>> = BARS
        .iter()
        .map(|(f, _, _)| OVER.iter().map(|(m, _)| r.ratio(*f, JUDGED, *m)).collect())
        .collect();
    let top = values
        .iter()
        .flatten()
        .flatten()
        .fold(1.5f64, |a, &b| a.max(b * 1.1));
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{} over nftables and routing, same run (CPU/pkt, p99: lower is better; black marks: targets)",
                JUDGED.name()
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..BARS.len() as f64, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(BARS.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 && i < BARS.len() {
                BARS[i].1.to_owned()
            } else {
                String::new()
            }
        })
        .y_desc("ratio")
        .draw()
        .map_err(err)?;
    for (i, row) in values.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let x0 = i as f64 + 0.15 + 0.35 * j as f64;
            let Some(v) = v else { continue };
            let color = OVER[j].1;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.33, *v)],
                    color.filled(),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{v:.2}"),
                    (x0 + 0.02, *v + top * 0.01),
                    ("sans-serif", 12),
                )))
                .map_err(err)?;
        }
    }
    // Over the bars, so that a bar cannot hide its target.
    for (i, (_, _, targets)) in BARS.iter().enumerate() {
        for (j, target) in targets.iter().enumerate() {
            let Some(target) = *target else { continue };
            let x0 = i as f64 + 0.15 + 0.35 * j as f64;
            chart
                .draw_series(LineSeries::new(
                    [(x0 - 0.02, target), (x0 + 0.35, target)],
                    BLACK.stroke_width(3),
                ))
                .map_err(err)?;
        }
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, 1.0), (BARS.len() as f64, 1.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
    for (mode, color) in OVER {
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
            .map_err(err)?
            .label(format!("over {}", mode.name()))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn scale<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    r: &Results,
    figure: Figure,
    title: &str,
    unit: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points = r.scale_points();
    let curves: Vec<Curve> = SCALE_MODES
        .iter()
        .map(|&(mode, color)| {
            let curve = points
                .iter()
                .filter_map(|&p| {
                    let s = r.scale_summary(mode, figure, p)?;
                    Some((f64::from(p), s.median * unit))
                })
                .collect();
            (mode, color, curve)
        })
        .collect();
    let top = curves
        .iter()
        .flat_map(|c| c.2.iter().map(|p| p.1))
        .fold(0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let last = points.last().copied().unwrap_or(1_000_000).max(10) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{title} vs live sessions"), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((500f64..last * 2.0).log_scale(), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("live sessions (log)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 100.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()
        .map_err(err)?;
    if curves.iter().all(|c| c.2.is_empty()) {
        chart
            .draw_series(std::iter::once(Text::new(
                "no scale runs",
                (1000.0, top / 2.0),
                ("sans-serif", 16),
            )))
            .map_err(err)?;
    }
    for (mode, color, curve) in curves {
        chart
            .draw_series(LineSeries::new(curve.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(mode.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
        chart
            .draw_series(curve.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}
