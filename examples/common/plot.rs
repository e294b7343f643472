//! Line charts for the harnesses' SVG plots (plotters' SVG backend): one or more panels in a
//! grid, each with its own y axis (linear from 0, or logarithmic), sharing the x axis' label.
//!
//! Included by the examples that plot (`#[path = "common/plot.rs"] mod plot;`); not an example
//! of its own.

// Each example uses the part it needs.
#![allow(dead_code)]

use std::{error::Error, path::Path};

use plotters::{coord::Shift, prelude::*};

/// One line: a name for the legend, a color and its points `(x, y)`.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) color: RGBColor,
    pub(crate) points: Vec<(f64, f64)>,
}

impl Series {
    /// A line through `values`, one every `step` on the x axis from 0.
    pub(crate) fn every(name: &str, color: RGBColor, step: f64, values: &[f64]) -> Self {
        Self {
            name: name.to_owned(),
            color,
            points: values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64 * step, *v))
                .collect(),
        }
    }
}

/// Where a panel's legend goes.
#[derive(Clone, Copy)]
pub(crate) enum Legend {
    /// plotters' default.
    MiddleRight,
    UpperLeft,
    LowerRight,
}

/// One chart of the grid.
pub(crate) struct Panel {
    pub(crate) title: String,
    pub(crate) y_label: String,
    /// A logarithmic y axis (points at or below 0 are left out).
    pub(crate) log_y: bool,
    /// Where the legend goes.
    pub(crate) legend: Legend,
    /// The top of a linear y axis, as a multiple of the highest point.
    pub(crate) y_room: f64,
    pub(crate) series: Vec<Series>,
}

impl Panel {
    pub(crate) fn new(title: &str, y_label: &str, series: Vec<Series>) -> Self {
        Self {
            title: title.to_owned(),
            y_label: y_label.to_owned(),
            log_y: false,
            legend: Legend::MiddleRight,
            y_room: 1.1,
            series,
        }
    }

    pub(crate) fn log_y(mut self) -> Self {
        self.log_y = true;
        self
    }

    pub(crate) fn legend(mut self, position: Legend) -> Self {
        self.legend = position;
        self
    }

    /// Room above the highest point (a multiple of it, 1.1 by default): space for a legend.
    pub(crate) fn y_room(mut self, factor: f64) -> Self {
        self.y_room = factor;
        self
    }
}

/// Writes `panels` to `path` as an SVG of `size` pixels, `columns` panels a row. With several
/// panels, `title` heads the whole figure and each panel has its own title.
pub(crate) fn write(
    path: &Path,
    title: &str,
    x_label: &str,
    size: (u32, u32),
    columns: usize,
    panels: &[Panel],
) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    if let [panel] = panels {
        draw(&root, title, 18, x_label, panel)?;
    } else {
        let body = root.titled(title, ("sans-serif", 18))?;
        let columns = columns.max(1);
        let areas = body.split_evenly((panels.len().div_ceil(columns), columns));
        for (area, panel) in areas.iter().zip(panels) {
            draw(area, &panel.title, 15, x_label, panel)?;
        }
    }
    root.present()?;
    Ok(())
}

fn draw(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    caption_size: u32,
    x_label: &str,
    panel: &Panel,
) -> Result<(), Box<dyn Error>> {
    let points = || panel.series.iter().flat_map(|s| s.points.iter().copied());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let x_min = points().map(|p| p.0).fold(x_max, f64::min).min(0.0);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", caption_size))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60);
    // The same drawing for either kind of y axis (their coordinate types differ).
    macro_rules! lines {
        ($chart:ident, $keep:expr) => {{
            $chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(panel.y_label.as_str())
                .draw()?;
            for series in &panel.series {
                let color = series.color;
                $chart
                    .draw_series(LineSeries::new(
                        series.points.iter().copied().filter($keep),
                        color.stroke_width(2),
                    ))?
                    .label(series.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
            $chart
                .configure_series_labels()
                .position(match panel.legend {
                    Legend::MiddleRight => SeriesLabelPosition::MiddleRight,
                    Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
                    Legend::LowerRight => SeriesLabelPosition::LowerRight,
                })
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }};
    }
    if panel.log_y {
        let positive = || points().map(|p| p.1).filter(|y| *y > 0.0);
        let top = positive().fold(1.0, f64::max) * 1.5;
        let bottom = positive().fold(top, f64::min) / 1.5;
        let mut chart = builder.build_cartesian_2d(x_min..x_max, (bottom..top).log_scale())?;
        lines!(chart, |p: &(f64, f64)| p.1 > 0.0);
    } else {
        let top = points().map(|p| p.1).fold(1.0, f64::max) * panel.y_room;
        let mut chart = builder.build_cartesian_2d(x_min..x_max, 0.0..top)?;
        lines!(chart, |_: &(f64, f64)| true);
    }
    Ok(())
}
