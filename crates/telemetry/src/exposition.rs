//! The Prometheus text format (0.0.4) and OpenMetrics 1.0, written family by
//! family: whoever owns counters calls [`Writer::family`] once and then
//! [`Writer::sample`] (or [`Writer::histogram`]) per series.

use std::fmt::{Display, Write as _};

use crate::HistogramSnapshot;

/// What the scraper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `Accept` names it, else the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A scrape body being written.
#[derive(Debug)]
pub struct Writer {
    out: String,
    format: Format,
}

impl Writer {
    pub fn new(format: Format) -> Writer {
        Writer {
            out: String::with_capacity(16 * 1024),
            format,
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Starts a family. `name` is the family name; counters get `_total` on their
    /// samples (and, in the Prometheus format, on the family name too).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (type_name, suffix) = match kind {
            Kind::Counter => ("counter", "_total"),
            Kind::Gauge => ("gauge", ""),
            Kind::Histogram => ("histogram", ""),
        };
        match self.format {
            Format::Prometheus => {
                let _ = writeln!(self.out, "# HELP {name}{suffix} {help}");
                let _ = writeln!(self.out, "# TYPE {name}{suffix} {type_name}");
            }
            Format::OpenMetrics => {
                let _ = writeln!(self.out, "# TYPE {name} {type_name}");
                let _ = writeln!(self.out, "# HELP {name} {help}");
            }
        }
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_into(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram series.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let bounds: Vec<String> = h.buckets.iter().map(|(b, _)| format!("{b:?}")).collect();
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", "+Inf"));
        let last = with_le.len() - 1;
        for ((_, count), le) in h.buckets.iter().zip(&bounds) {
            with_le[last].1 = le;
            self.sample(&bucket, &with_le, count);
        }
        with_le[last].1 = "+Inf";
        self.sample(&bucket, &with_le, h.count);
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count);
    }

    /// The body so far, without the OpenMetrics end marker: a part of a
    /// scrape that someone else finishes.
    pub fn into_part(self) -> String {
        self.out
    }

    /// The body, with the OpenMetrics `# EOF` line when that is the format.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape_into(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn formats_differ_in_type_lines_and_eof() {
        for (format, type_line, eof) in [
            (Format::Prometheus, "# TYPE x_total counter", false),
            (Format::OpenMetrics, "# TYPE x counter", true),
        ] {
            let mut w = Writer::new(format);
            w.family("x", Kind::Counter, "help");
            w.sample("x_total", &[("a", "b")], 3);
            let out = w.finish();
            assert!(out.contains(type_line), "{out}");
            assert!(out.contains("x_total{a=\"b\"} 3\n"), "{out}");
            assert_eq!(out.ends_with("# EOF\n"), eof);
        }
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
    }

    #[test]
    fn histogram_series() {
        let mut w = Writer::new(Format::Prometheus);
        let h = HistogramSnapshot {
            buckets: vec![(0.5, 1), (1.0, 2)],
            count: 3,
            sum_seconds: 2.5,
        };
        w.histogram("d_seconds", &[("p", "x")], &h);
        assert_eq!(
            w.finish(),
            "d_seconds_bucket{p=\"x\",le=\"0.5\"} 1\n\
             d_seconds_bucket{p=\"x\",le=\"1.0\"} 2\n\
             d_seconds_bucket{p=\"x\",le=\"+Inf\"} 3\n\
             d_seconds_sum{p=\"x\"} 2.5\n\
             d_seconds_count{p=\"x\"} 3\n"
        );
    }
}
