//! The one writer of the Prometheus text exposition format (0.0.4) for both binaries: metric names,
//! `# HELP` and `# TYPE` lines, label values and numbers are written here and nowhere else, so every
//! page escapes the same way (`\\`, `"` and newline in label values; `\\` and newline in help text) and
//! writes NaN and infinities as Prometheus reads them. Names are the caller's constants or strings
//! already checked against the grammar ([`crate::shapes`]); values may be anything.
//!
//! Every sample of a [`Page`] carries its base labels first (the aggregator's `cluster_id`, the agent's
//! `node`), then its own.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::labels::{Counts, Label};
use crate::v1::FamilyType;

/// The `# TYPE` of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Summary,
    Histogram,
    Untyped,
}

impl Kind {
    pub fn keyword(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
            Kind::Histogram => "histogram",
            Kind::Untyped => "untyped",
        }
    }
}

impl From<FamilyType> for Kind {
    fn from(t: FamilyType) -> Self {
        match t {
            FamilyType::Counter => Kind::Counter,
            FamilyType::Gauge => Kind::Gauge,
            FamilyType::Summary => Kind::Summary,
            FamilyType::Histogram => Kind::Histogram,
            _ => Kind::Untyped,
        }
    }
}

/// A page being written into `out`.
pub struct Page<'a> {
    out: &'a mut String,
    /// The base labels, rendered once: `k="v",k2="v2"` (escaped).
    base: String,
}

impl<'a> Page<'a> {
    /// Append to `out`; every sample gets the `base` labels (values escaped here).
    pub fn new(out: &'a mut String, base: &[(&'static str, &str)]) -> Self {
        let mut rendered = String::new();
        for (i, (n, v)) in base.iter().enumerate() {
            if i > 0 {
                rendered.push(',');
            }
            push_label(&mut rendered, n, v);
        }
        Self { out, base: rendered }
    }

    /// Declare a family (its `# HELP` and `# TYPE`); its samples are written through the returned
    /// [`Family`], bound to its name, so a family's samples follow its declaration and never carry
    /// another family's name.
    pub fn family<'p>(&'p mut self, name: &'p str, kind: Kind, help: &str) -> Family<'p, 'a> {
        let _ = writeln!(self.out, "# HELP {name} {}\n# TYPE {name} {}", escape_help(help), kind.keyword());
        Family { page: self, name }
    }

    /// One sample: `name{base…,labels…} value`.
    fn sample<'l>(&mut self, name: &str, suffix: &str, labels: impl IntoIterator<Item = (&'l str, &'l str)>, value: f64) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        let mut open = !self.base.is_empty();
        if open {
            self.out.push('{');
            self.out.push_str(&self.base);
        }
        for (n, v) in labels {
            self.out.push(if open { ',' } else { '{' });
            open = true;
            push_label(self.out, n, v);
        }
        if open {
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(self.out, value);
        self.out.push('\n');
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(&[], value);
        self
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.single(name, Kind::Counter, help, value as f64)
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.single(name, Kind::Gauge, help, value)
    }

    /// A counter family with one sample per value of label `L`, zeros included.
    pub fn counts<L: Label>(&mut self, name: &str, help: &str, label: &str, counts: &Counts<L>) -> &mut Self {
        let mut family = self.family(name, Kind::Counter, help);
        for (l, v) in counts.iter() {
            family.sample(&[(label, l.as_str())], v as f64);
        }
        self
    }
}

/// A declared family: its samples, under its name.
pub struct Family<'p, 'a> {
    page: &'p mut Page<'a>,
    name: &'p str,
}

impl Family<'_, '_> {
    /// A sample of the family: `name{base…,labels…} value`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.page.sample(self.name, "", labels.iter().copied(), value);
        self
    }

    /// A sample named after the family with `suffix` (`_sum`, `_count`, `_bucket` of a summary or
    /// histogram, or `_total`), labels from an iterator.
    pub fn suffixed<'l>(&mut self, suffix: &str, labels: impl IntoIterator<Item = (&'l str, &'l str)>, value: f64) -> &mut Self {
        self.page.sample(self.name, suffix, labels, value);
        self
    }
}

fn push_label(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    out.push_str(&escape_label_value(value));
    out.push('"');
}

/// A label value as the text format needs it: `\\`, `"` and newline escaped.
pub fn escape_label_value(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(v);
    }
    Cow::Owned(v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

/// Help text: `\\` and newline escaped.
pub fn escape_help(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '\n']) {
        return Cow::Borrowed(v);
    }
    Cow::Owned(v.replace('\\', "\\\\").replace('\n', "\\n"))
}

/// A sample value: shortest round-trip decimal, `NaN`, `+Inf`, `-Inf`.
pub fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::label_enum! {
        enum Outcome { Sent => "sent", Dropped => "dropped" }
    }

    #[test]
    fn writes_escaped_families_and_samples() {
        let mut out = String::new();
        let mut p = Page::new(&mut out, &[("cluster_id", "a\"b")]);
        p.family("x_total", Kind::Counter, "line one\nline \\ two").sample(&[("v", "q\"}\n\\")], 3.0);
        p.gauge("g", "gauge", f64::NAN).gauge("inf", "inf", f64::NEG_INFINITY).gauge("frac", "frac", 0.25);
        let mut c = Counts::<Outcome>::default();
        c.inc(Outcome::Dropped);
        p.counts("o_total", "outcomes", "outcome", &c);
        let mut bare = String::new();
        Page::new(&mut bare, &[]).counter("plain_total", "no labels", 7);
        assert_eq!(
            out,
            "# HELP x_total line one\\nline \\\\ two\n# TYPE x_total counter\nx_total{cluster_id=\"a\\\"b\",v=\"q\\\"}\\n\\\\\"} 3\n\
             # HELP g gauge\n# TYPE g gauge\ng{cluster_id=\"a\\\"b\"} NaN\n\
             # HELP inf inf\n# TYPE inf gauge\ninf{cluster_id=\"a\\\"b\"} -Inf\n\
             # HELP frac frac\n# TYPE frac gauge\nfrac{cluster_id=\"a\\\"b\"} 0.25\n\
             # HELP o_total outcomes\n# TYPE o_total counter\no_total{cluster_id=\"a\\\"b\",outcome=\"sent\"} 0\no_total{cluster_id=\"a\\\"b\",outcome=\"dropped\"} 1\n"
        );
        assert_eq!(bare, "# HELP plain_total no labels\n# TYPE plain_total counter\nplain_total 7\n");
    }

    #[test]
    fn a_familys_samples_carry_its_name_and_suffixes() {
        let mut out = String::new();
        let mut p = Page::new(&mut out, &[]);
        p.family("lat", Kind::Summary, "latency").sample(&[("quantile", "0.5")], 1.0).suffixed("_sum", [], 3.0).suffixed(
            "_count",
            [("a", "b")],
            2.0,
        );
        assert_eq!(out, "# HELP lat latency\n# TYPE lat summary\nlat{quantile=\"0.5\"} 1\nlat_sum 3\nlat_count{a=\"b\"} 2\n");
    }
}
