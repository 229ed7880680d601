//! PNG line charts for the report (plotters, bitmap backend). Text needs a TrueType font:
//! loaded at run time from the usual Debian places (`fonts-dejavu-core`,
//! `fonts-liberation`), or `BULLY_BENCH_FONT`, so no system library is linked.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::register_font;

/// How an axis maps values: log axes place powers evenly (worker counts, throughput).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    Linear,
    Log2,
    Log10,
}

impl Scale {
    /// Whether `v` has a place on the axis (log axes have none for 0).
    fn shows(self, v: f64) -> bool {
        v.is_finite() && (self == Scale::Linear || v > 0.0)
    }

    fn to_axis(self, v: f64) -> f64 {
        match self {
            Scale::Linear => v,
            Scale::Log2 => v.max(f64::MIN_POSITIVE).log2(),
            Scale::Log10 => v.max(f64::MIN_POSITIVE).log10(),
        }
    }

    /// Tick label at axis position `a`: log axes label whole powers only.
    fn label(self, a: f64) -> String {
        let power = |base: f64| {
            if (a - a.round()).abs() > 1e-6 {
                String::new()
            } else {
                thousands(base.powf(a.round()))
            }
        };
        match self {
            Scale::Linear => thousands(a),
            Scale::Log2 => power(2.0),
            Scale::Log10 => power(10.0),
        }
    }
}

/// `1234567.0` as `1,234,567`; small values keep up to two decimals.
pub fn thousands(v: f64) -> String {
    if v.abs() < 10.0 && v.fract() != 0.0 {
        return format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// One line: `(x, y)` points in data units.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart.
pub struct Panel {
    pub title: String,
    /// Axis descriptions, units included.
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub lines: Vec<Line>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

const PANEL: (u32, u32) = (640, 420);

/// Draws `panels` in a grid of `columns` into a PNG at `path`.
pub fn draw(path: &Path, panels: &[Panel], columns: usize) -> Result<(), String> {
    load_font()?;
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns).max(1);
    let size = (PANEL.0 * columns as u32, PANEL.1 * rows as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    for (area, panel) in root.split_evenly((rows, columns)).iter().zip(panels) {
        draw_panel(area, panel).map_err(|e| format!("{}: {e}", panel.title))?;
    }
    root.present()
        .map_err(|e| format!("write {}: {e}", path.display()))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = |line: &Line| -> Vec<(f64, f64)> {
        line.points
            .iter()
            .filter(|(x, y)| panel.x_scale.shows(*x) && panel.y_scale.shows(*y))
            .map(|(x, y)| (panel.x_scale.to_axis(*x), panel.y_scale.to_axis(*y)))
            .collect()
    };
    let all: Vec<(f64, f64)> = panel.lines.iter().flat_map(points).collect();
    let x = range(all.iter().map(|p| p.0), panel.x_scale, 0.05);
    // Room above the data for the legend.
    let y = range(all.iter().map(|p| p.1), panel.y_scale, 0.35);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    let (x_scale, y_scale) = (panel.x_scale, panel.y_scale);
    let x_fmt = move |a: &f64| x_scale.label(*a);
    let y_fmt = move |a: &f64| y_scale.label(*a);
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .x_labels(10)
        .y_labels(8)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .light_line_style(WHITE)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    for (i, line) in panel.lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts = points(line);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(&line.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    if !panel.lines.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    Ok(())
}

/// The axis range around `values` (axis units), `headroom` (a fraction of the span) above them;
/// linear axes start at 0, log axes at a whole power.
fn range(values: impl Iterator<Item = f64>, scale: Scale, headroom: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let (lo, hi) = match scale {
        Scale::Linear => (lo.min(0.0), hi.max(lo.min(0.0) + 1.0)),
        Scale::Log2 | Scale::Log10 => (lo.floor() - 0.1, hi.max(lo.floor() + 1.0)),
    };
    (lo, hi + (hi - lo) * headroom)
}

const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers "sans-serif" once per process.
fn load_font() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let candidates = std::env::var_os("BULLY_BENCH_FONT")
                .map(PathBuf::from)
                .into_iter()
                .chain(FONTS.iter().map(PathBuf::from));
            for path in candidates {
                if let Ok(bytes) = std::fs::read(&path) {
                    // Registered fonts live as long as the process.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    return register_font("sans-serif", FontStyle::Normal, bytes)
                        .map_err(|_| format!("{} is not a usable TrueType font", path.display()));
                }
            }
            Err(
                "no TrueType font for the plots: apt-get install fonts-dejavu-core (or set \
                 BULLY_BENCH_FONT to a .ttf file)"
                    .into(),
            )
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_as_numbers() {
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(20000.0), "20,000");
        assert_eq!(thousands(0.5), "0.5");
        assert_eq!(Scale::Log2.label(6.0), "64");
        assert_eq!(Scale::Log2.label(6.5), "");
        assert_eq!(Scale::Log10.label(4.0), "10,000");
    }
}
