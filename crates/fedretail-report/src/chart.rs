//! Line and bar charts as SVG strings. Ranges come from the data; points that are not
//! finite are left out, and a chart without data says so instead of failing.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::FontTransform;

/// Colour-blind-safe (Okabe–Ito) colours, one per series.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(100, 100, 100),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const FONT: &str = "sans-serif";

/// A named line of (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: &str, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.to_string(),
            points,
        }
    }
}

/// Lines over a numeric x axis (rounds, days, false-positive rate).
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    title: String,
    x_label: String,
    y_label: String,
    series: Vec<Series>,
    log_y: bool,
    diagonal: bool,
    markers: bool,
    from_zero: bool,
    integer_x: bool,
    size: (u32, u32),
}

/// Past this many points a line is drawn without markers.
const MAX_MARKED: usize = 40;

impl LineChart {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        LineChart {
            title: title.to_string(),
            x_label: x_label.to_string(),
            y_label: y_label.to_string(),
            series: Vec::new(),
            log_y: false,
            diagonal: false,
            markers: false,
            from_zero: false,
            integer_x: false,
            size: (560, 320),
        }
    }

    pub fn series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }

    /// A logarithmic y axis (step norms, losses that fall by orders of magnitude).
    pub fn log_y(mut self) -> Self {
        self.log_y = true;
        self
    }

    /// The y = x line on a unit square, as under an ROC curve.
    pub fn diagonal(mut self) -> Self {
        self.diagonal = true;
        self
    }

    /// Draw each point (of series short enough for it to help).
    pub fn markers(mut self) -> Self {
        self.markers = true;
        self
    }

    /// Start the y axis at zero (times, bytes), not at the data's lowest value.
    pub fn from_zero(mut self) -> Self {
        self.from_zero = true;
        self
    }

    /// Label only whole numbers on the x axis (rounds, days).
    pub fn integer_x(mut self) -> Self {
        self.integer_x = true;
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    /// The points as drawn: finite, and log10(y) on a log axis.
    fn drawn(&self) -> Vec<Vec<(f64, f64)>> {
        let log = self.log_y;
        self.series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log || *y > 0.0))
                    .map(|&(x, y)| (x, if log { y.log10() } else { y }))
                    .collect()
            })
            .collect()
    }

    pub fn svg(&self) -> String {
        let lines = self.drawn();
        let all = || lines.iter().flatten();
        let Some(((x0, x1), (y0, y1))) = bounds(all().map(|p| p.0)).zip(bounds(all().map(|p| p.1)))
        else {
            return empty_svg(&self.title, self.size);
        };
        let (y0, y1) = if self.diagonal {
            (0.0, 1.0)
        } else if self.from_zero && !self.log_y {
            (y0.min(0.0), y1)
        } else {
            (y0, y1)
        };
        let mut out = String::new();
        let drawn = self.draw(&mut out, &lines, pad(x0, x1), pad(y0, y1));
        match drawn {
            Ok(()) => out,
            Err(e) => error_svg(&self.title, self.size, &e),
        }
    }

    fn draw(
        &self,
        out: &mut String,
        lines: &[Vec<(f64, f64)>],
        x: (f64, f64),
        y: (f64, f64),
    ) -> Result<(), String> {
        let root = SVGBackend::with_string(out, self.size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x.0..x.1, y.0..y.1)
            .map_err(|e| e.to_string())?;
        let log = self.log_y;
        let y_fmt = move |v: &f64| {
            if log {
                format!("{:.1e}", 10f64.powf(*v))
            } else {
                tick(*v)
            }
        };
        let whole = self.integer_x;
        let x_fmt = move |v: &f64| {
            let integral = (v - v.round()).abs() < 1e-9;
            if whole && !integral {
                String::new()
            } else {
                tick(*v)
            }
        };
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| e.to_string())?;
        if self.diagonal {
            let grey = BLACK.mix(0.3);
            chart
                .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], grey))
                .map_err(|e| e.to_string())?;
        }
        for (i, (s, points)) in self.series.iter().zip(lines).enumerate() {
            let c = colour(i);
            let style = c.stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))
                .map_err(|e| e.to_string())?
                .label(&s.name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
            if self.markers && points.len() <= MAX_MARKED {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(|e| e.to_string())?;
            }
        }
        if self.series.len() > 1 {
            // Under an ROC curve the empty corner is the lower right.
            let corner = if self.diagonal {
                SeriesLabelPosition::LowerRight
            } else {
                SeriesLabelPosition::UpperRight
            };
            legend(&mut chart, corner)?;
        }
        root.present().map_err(|e| e.to_string())
    }
}

/// A named column of a bar chart: what one group's bar is for a row (None: no bar).
pub type Column<'a, T> = (&'a str, fn(&T) -> Option<f64>);

/// Bars for a few named groups side by side in each category (e.g. WAPE of the
/// local, federated and kept forecasts per business type).
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    title: String,
    y_label: String,
    categories: Vec<String>,
    groups: Vec<(String, Vec<Option<f64>>)>,
    size: (u32, u32),
}

impl BarChart {
    pub fn new(title: &str, y_label: &str, categories: Vec<String>) -> Self {
        BarChart {
            title: title.to_string(),
            y_label: y_label.to_string(),
            categories,
            groups: Vec::new(),
            size: (720, 380),
        }
    }

    /// One category per row (named by `label`), one group per column.
    pub fn of_rows<T>(
        title: &str,
        y_label: &str,
        rows: &[T],
        label: impl Fn(&T) -> String,
        columns: &[Column<'_, T>],
    ) -> Self {
        let categories = rows.iter().map(label).collect();
        let mut chart = BarChart::new(title, y_label, categories);
        for (name, value) in columns {
            chart = chart.group(name, rows.iter().map(value).collect());
        }
        chart
    }

    /// One bar per category (None: no bar); values beyond the categories are ignored.
    pub fn group(mut self, name: &str, values: Vec<Option<f64>>) -> Self {
        self.groups.push((name.to_string(), values));
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    pub fn svg(&self) -> String {
        let top = self
            .groups
            .iter()
            .flat_map(|(_, v)| v.iter().flatten())
            .filter(|v| v.is_finite())
            .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        if self.categories.is_empty() || !top.is_finite() {
            return empty_svg(&self.title, self.size);
        }
        let mut out = String::new();
        // Room above the bars for the legend.
        let headroom = if self.groups.len() > 1 { 1.35 } else { 1.1 };
        match self.draw(&mut out, top.max(0.0) * headroom + f64::EPSILON) {
            Ok(()) => out,
            Err(e) => error_svg(&self.title, self.size, &e),
        }
    }

    fn draw(&self, out: &mut String, top: f64) -> Result<(), String> {
        // Each category takes one slot per group and one empty slot as a gap.
        let per = self.groups.len().max(1) + 1;
        let slots = self.categories.len() * per;
        let rotate = self.categories.len() > 8;
        let root = SVGBackend::with_string(out, self.size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, (FONT, 18))
            .margin(12)
            .x_label_area_size(if rotate { 110 } else { 40 })
            .y_label_area_size(64)
            .build_cartesian_2d((0..slots).into_segmented(), 0f64..top)
            .map_err(|e| e.to_string())?;
        let middle = (per - 1) / 2;
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(k) if k % per == middle => {
                self.categories.get(k / per).cloned().unwrap_or_default()
            }
            _ => String::new(),
        };
        let style = if rotate {
            (FONT, 12).into_font().transform(FontTransform::Rotate90)
        } else {
            (FONT, 12).into_font()
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE.mix(0.0))
            .x_labels(slots)
            .x_label_formatter(&label)
            .x_label_style(style)
            .y_desc(&self.y_label)
            .y_label_formatter(&|v| tick(*v))
            .draw()
            .map_err(|e| e.to_string())?;
        for (j, (name, values)) in self.groups.iter().enumerate() {
            let c = colour(j);
            let bars = values.iter().take(self.categories.len()).enumerate();
            let bars = bars.filter_map(|(i, v)| {
                let v = v.filter(|v| v.is_finite())?;
                let k = i * per + j;
                let corners = [
                    (SegmentValue::Exact(k), 0.0),
                    (SegmentValue::Exact(k + 1), v),
                ];
                Some(Rectangle::new(corners, c.filled()))
            });
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        if self.groups.len() > 1 {
            legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        root.present().map_err(|e| e.to_string())
    }
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    corner: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(corner)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 12))
        .draw()
        .map_err(|e| e.to_string())
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// A range with a little room, never empty.
fn pad(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        let m = (hi - lo) * 0.04;
        (lo - m, hi + m)
    } else {
        (lo - 0.5, hi + 0.5)
    }
}

/// A tick label: short, without float noise.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.1e}")
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn empty_svg(title: &str, size: (u32, u32)) -> String {
    note_svg(title, size, "no data yet")
}

fn error_svg(title: &str, size: (u32, u32), error: &str) -> String {
    note_svg(title, size, &format!("chart could not be drawn: {error}"))
}

fn note_svg(title: &str, (w, h): (u32, u32), note: &str) -> String {
    let (title, note) = (crate::escape(title), crate::escape(note));
    format!(
        r##"<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg"><rect width="{w}" height="{h}" fill="#fff"/><text x="{x}" y="28" text-anchor="middle" font-family="{FONT}" font-size="18">{title}</text><text x="{x}" y="{y}" text-anchor="middle" font-family="{FONT}" font-size="14" fill="#777">{note}</text></svg>"##,
        x = w / 2,
        y = h / 2
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    #[test]
    fn a_line_chart_draws_every_series_with_its_legend() {
        let svg = LineChart::new("Loss", "round", "loss")
            .series(Series::new(
                "federated",
                vec![(1.0, 3.0), (2.0, 2.0), (3.0, 1.5)],
            ))
            .series(Series::new("local", vec![(1.0, 2.5), (3.0, 2.4)]))
            .svg();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("federated") && svg.contains("local"));
        assert!(
            svg.contains(">\nLoss\n<") || svg.contains(">Loss<"),
            "{svg}"
        );
        // Two data lines plus the two legend marks.
        assert!(count(&svg, "<polyline") >= 2, "{svg}");
    }

    #[test]
    fn points_that_are_not_finite_are_left_out_and_no_data_says_so() {
        let svg = LineChart::new("Loss", "round", "loss")
            .series(Series::new(
                "a",
                vec![(1.0, f64::NAN), (f64::INFINITY, 1.0)],
            ))
            .svg();
        assert!(svg.contains("no data yet"), "{svg}");
        let log = LineChart::new("Step", "round", "norm")
            .log_y()
            .series(Series::new("a", vec![(1.0, 0.0), (2.0, 1e-3), (3.0, 1e-6)]))
            .svg();
        assert!(log.contains("1.0e-6") || log.contains("1.0e-5"), "{log}");
    }

    #[test]
    fn a_bar_chart_draws_one_bar_per_present_value_and_labels_categories() {
        let cats = vec!["florist".to_string(), "grocery".to_string()];
        let svg = BarChart::new("WAPE", "WAPE %", cats)
            .group("local", vec![Some(30.0), Some(20.0)])
            .group("federated", vec![Some(25.0), None])
            .svg();
        assert!(svg.contains("florist") && svg.contains("grocery"), "{svg}");
        // Three bars and two legend boxes, on top of the background.
        let filled = count(&svg, "<rect") - 1;
        assert!(filled >= 5, "{filled} rects in {svg}");
        let empty = BarChart::new("WAPE", "%", vec!["a".into()])
            .group("x", vec![None])
            .svg();
        assert!(empty.contains("no data yet"));
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(1.0 / 3.0), "0.333");
        assert_eq!(tick(2.5e7), "2.5e7");
    }
}
