//! Figures as PNG and SVG with plotters. Text is rendered from an embedded DejaVu Sans (see
//! `assets/DejaVuSans.LICENSE`) through ab_glyph, so no system fonts are needed.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::BenchError;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Family name every text style uses.
const FAMILY: &str = "sans-serif";

fn register_font() {
    REGISTER.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            log::error!("the embedded font does not parse; figures will have no text");
        }
    });
}

/// One bar of the Fig. 14 chart.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Label under the bar.
    pub label: String,
    /// Height (Gbit/s); `None` draws an "n/a" placeholder.
    pub value: Option<f64>,
    /// Error bar (low, high), Gbit/s.
    pub ci: Option<(f64, f64)>,
    /// Colour family.
    pub color: RGBColor,
}

/// One point of a rule-count curve.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Rules in the filter.
    pub rules: f64,
    /// Mean Gbit/s.
    pub mean: f64,
    /// CI (low, high).
    pub ci: Option<(f64, f64)>,
}

/// A named curve.
#[derive(Debug, Clone)]
pub struct Curve {
    /// Legend entry.
    pub name: String,
    /// Points in increasing rule count.
    pub points: Vec<Point>,
    /// Line colour.
    pub color: RGBColor,
}

/// Colours of the scenario families (colour-blind safe, Okabe-Ito).
pub mod palette {
    use plotters::style::RGBColor;
    /// native
    pub const NATIVE: RGBColor = RGBColor(0x99, 0x99, 0x99);
    /// ILA
    pub const ILA: RGBColor = RGBColor(0x00, 0x72, 0xB2);
    /// swarm
    pub const SWARM: RGBColor = RGBColor(0xE6, 0x9F, 0x00);
    /// iptables curve
    pub const IPTABLES: RGBColor = RGBColor(0xD5, 0x5E, 0x00);
    /// eBPF curve
    pub const EBPF: RGBColor = RGBColor(0x00, 0x9E, 0x73);
    /// EVPN (VXLAN per tenant, MP-BGP EVPN).
    pub const EVPN: RGBColor = RGBColor(0xCC, 0x79, 0xA7);
}

const SIZE: (u32, u32) = (1100, 650);

/// A figure drawable on any backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Writes `<stem>.png` and `<stem>.svg`.
fn both(dir: &Path, stem: &str, fig: &impl Figure) -> Result<(), BenchError> {
    register_font();
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    let err = |file: &Path| {
        let file = file.display().to_string();
        move |reason: String| BenchError::Plot { file, reason }
    };
    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        fig.draw(&root).map_err(err(&png))?;
        root.present().map_err(|e| err(&png)(e.to_string()))?;
    }
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        fig.draw(&root).map_err(err(&svg))?;
        root.present().map_err(|e| err(&svg)(e.to_string()))?;
    }
    Ok(())
}

/// Bars with error bars.
struct Fig14<'a> {
    title: &'a str,
    bars: &'a [Bar],
}

impl Figure for Fig14<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |x: &dyn std::fmt::Display| x.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let top = self
            .bars
            .iter()
            .filter_map(|b| b.ci.map(|c| c.1).or(b.value))
            .fold(1.0_f64, f64::max)
            * 1.18;
        let n = self.bars.len().max(1);
        let labels: Vec<String> = self.bars.iter().map(|b| b.label.clone()).collect();
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FAMILY, 26))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..n as f64, 0.0..top)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                // Only the bar centres get a label.
                if (x - (i as f64 + 0.5)).abs() < 1e-6 {
                    labels.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("TCP throughput (Gbit/s)")
            .x_desc("scenario")
            .label_style((FAMILY, 18))
            .axis_desc_style((FAMILY, 20))
            .draw()
            .map_err(|x| e(&x))?;
        for (i, b) in self.bars.iter().enumerate() {
            let x0 = i as f64 + 0.18;
            let x1 = i as f64 + 0.82;
            let xm = i as f64 + 0.5;
            match b.value {
                Some(v) => {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(x0, 0.0), (x1, v)],
                            b.color.filled(),
                        )))
                        .map_err(|x| e(&x))?;
                    if let Some((lo, hi)) = b.ci {
                        // A CI reaching below zero (few runs) is cut at the axis.
                        let lo = lo.max(0.0);
                        let cap = 0.08;
                        let style = BLACK.stroke_width(2);
                        let lines = [
                            vec![(xm, lo), (xm, hi)],
                            vec![(xm - cap, lo), (xm + cap, lo)],
                            vec![(xm - cap, hi), (xm + cap, hi)],
                        ];
                        chart
                            .draw_series(lines.into_iter().map(|l| PathElement::new(l, style)))
                            .map_err(|x| e(&x))?;
                    }
                    chart
                        .draw_series(std::iter::once(Text::new(
                            format!("{v:.2}"),
                            (x0 + 0.02, v + top * 0.035),
                            (FAMILY, 18).into_font(),
                        )))
                        .map_err(|x| e(&x))?;
                }
                None => {
                    chart
                        .draw_series(std::iter::once(Text::new(
                            "n/a (not yet)".to_string(),
                            (xm - 0.28, top * 0.05),
                            (FAMILY, 16).into_font().color(&RGBColor(0x66, 0x66, 0x66)),
                        )))
                        .map_err(|x| e(&x))?;
                }
            }
        }
        Ok(())
    }
}

/// The paper's Fig. 14 as a bar chart with 95 % CI error bars: `<dir>/<stem>.{png,svg}`.
pub fn fig14(dir: &Path, stem: &str, title: &str, bars: &[Bar]) -> Result<(), BenchError> {
    let f = Fig14 { title, bars };
    both(dir, stem, &f)
}

struct RulesFig<'a> {
    title: &'a str,
    curves: &'a [Curve],
    reference: Option<Point>,
}

impl Figure for RulesFig<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |x: &dyn std::fmt::Display| x.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let all = self.curves.iter().flat_map(|c| c.points.iter());
        let top = all
            .clone()
            .chain(self.reference.iter())
            .map(|p| p.ci.map(|c| c.1).unwrap_or(p.mean).max(p.mean))
            .fold(1.0_f64, f64::max)
            * 1.15;
        let max_rules = all.map(|p| p.rules).fold(10.0_f64, f64::max) * 2.0;
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FAMILY, 26))
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(80)
            .build_cartesian_2d((1.0..max_rules).log_scale(), 0.0..top)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("rules in the filter (log scale)")
            .y_desc("TCP throughput (Gbit/s)")
            .x_label_formatter(&|x| {
                if *x >= 1000.0 {
                    format!("{}k", x / 1000.0)
                } else {
                    format!("{x}")
                }
            })
            .label_style((FAMILY, 18))
            .axis_desc_style((FAMILY, 20))
            .draw()
            .map_err(|x| e(&x))?;
        if let Some(r) = self.reference {
            let grey = RGBColor(0x55, 0x55, 0x55);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(1.0, r.mean), (max_rules, r.mean)],
                    8,
                    6,
                    grey.stroke_width(2),
                ))
                .map_err(|x| e(&x))?
                .label(format!("swarm, no filter ({:.2} Gbit/s)", r.mean))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
        }
        for c in self.curves {
            let color = c.color;
            chart
                .draw_series(LineSeries::new(
                    c.points.iter().map(|p| (p.rules, p.mean)),
                    color.stroke_width(3),
                ))
                .map_err(|x| e(&x))?
                .label(c.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart
                .draw_series(
                    c.points
                        .iter()
                        .map(|p| Circle::new((p.rules, p.mean), 5, color.filled())),
                )
                .map_err(|x| e(&x))?;
            for p in &c.points {
                if let Some((lo, hi)) = p.ci {
                    let lo = lo.max(0.0);
                    let (a, b) = (p.rules / 1.15, p.rules * 1.15);
                    let lines = [
                        vec![(p.rules, lo), (p.rules, hi)],
                        vec![(a, lo), (b, lo)],
                        vec![(a, hi), (b, hi)],
                    ];
                    chart
                        .draw_series(lines.into_iter().map(|l| PathElement::new(l, BLACK)))
                        .map_err(|x| e(&x))?;
                }
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FAMILY, 18))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(|x| e(&x))?;
        Ok(())
    }
}

/// Throughput against rule count (log x) per series, with the unfiltered reference as a dashed
/// line: `<dir>/<stem>.{png,svg}`.
pub fn rules_curve(
    dir: &Path,
    stem: &str,
    title: &str,
    curves: &[Curve],
    reference: Option<Point>,
) -> Result<(), BenchError> {
    let f = RulesFig {
        title,
        curves,
        reference,
    };
    both(dir, stem, &f)
}

/// One point of a line against a numeric x (a sweep's streams).
#[derive(Debug, Clone, Copy)]
pub struct XyPoint {
    /// x value.
    pub x: f64,
    /// Mean.
    pub mean: f64,
    /// CI (low, high).
    pub ci: Option<(f64, f64)>,
}

/// A named line of [`XyPoint`]s.
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend entry.
    pub name: String,
    /// Points in increasing x.
    pub points: Vec<XyPoint>,
    /// Line colour.
    pub color: RGBColor,
}

/// One panel of a faceted figure: its axis descriptions and lines.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Panel title.
    pub title: String,
    /// y axis description.
    pub y_desc: String,
    /// Lines.
    pub lines: Vec<Line>,
}

struct PanelsFig<'a> {
    title: &'a str,
    x_desc: &'a str,
    panels: &'a [Panel],
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    x_desc: &str,
    p: &Panel,
) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let pts = p.lines.iter().flat_map(|l| l.points.iter());
    let top = pts
        .clone()
        .map(|q| q.ci.map(|c| c.1).unwrap_or(q.mean).max(q.mean))
        .filter(|v| v.is_finite())
        .fold(1e-3_f64, f64::max)
        * 1.15;
    let max_x = pts.map(|q| q.x).fold(1.0_f64, f64::max);
    // Room on both sides of the extreme points for their error bars.
    let pad = (max_x * 0.08).max(0.5);
    let (x0, x1) = (0.0_f64.max(1.0 - pad), max_x + pad);
    let xs: Vec<f64> = p
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|q| q.x))
        .collect();
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 22))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..top)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(x_desc)
        .y_desc(p.y_desc.as_str())
        // Ticks every half unit, labelled only where a measured point is.
        .x_labels((((x1 - x0) * 2.0) as usize + 1).min(64))
        .x_label_formatter(&|x| {
            if xs.iter().any(|v| (v - x).abs() < 1e-6) {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 18))
        .draw()
        .map_err(|x| e(&x))?;
    let cap = (x1 - x0) * 0.012;
    let n = p.lines.len() as f64;
    for (li, l) in p.lines.iter().enumerate() {
        let color = l.color;
        // Lines side by side around each measured x, so overlapping error bars stay apart.
        let dx = (li as f64 - (n - 1.0) / 2.0) * (x1 - x0) * 0.01;
        chart
            .draw_series(LineSeries::new(
                l.points.iter().map(|q| (q.x + dx, q.mean)),
                color.stroke_width(3),
            ))
            .map_err(|x| e(&x))?
            .label(l.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(
                l.points
                    .iter()
                    .map(|q| Circle::new((q.x + dx, q.mean), 5, color.filled())),
            )
            .map_err(|x| e(&x))?;
        for q in &l.points {
            if let Some((lo, hi)) = q.ci {
                let lo = lo.max(0.0);
                let hi = hi.min(top);
                let x = q.x + dx;
                let lines = [
                    vec![(x, lo), (x, hi)],
                    vec![(x - cap, lo), (x + cap, lo)],
                    vec![(x - cap, hi), (x + cap, hi)],
                ];
                chart
                    .draw_series(lines.into_iter().map(|v| PathElement::new(v, color)))
                    .map_err(|x| e(&x))?;
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FAMILY, 16))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}

impl Figure for PanelsFig<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |x: &dyn std::fmt::Display| x.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let root = root.titled(self.title, (FAMILY, 26)).map_err(|x| e(&x))?;
        let areas = root.split_evenly((1, self.panels.len().max(1)));
        for (area, p) in areas.iter().zip(self.panels) {
            draw_panel(area, self.x_desc, p)?;
        }
        Ok(())
    }
}

/// Side-by-side line panels sharing an x description (a sweep's throughput and CPU against
/// streams), with 95 % CI error bars: `<dir>/<stem>.{png,svg}`.
pub fn panels(
    dir: &Path,
    stem: &str,
    title: &str,
    x_desc: &str,
    panels: &[Panel],
) -> Result<(), BenchError> {
    let f = PanelsFig {
        title,
        x_desc,
        panels,
    };
    both(dir, stem, &f)
}
