//! A small, strict-where-it-matters parser for the Prometheus text exposition format (0.0.4) as ipamd's
//! client_golang writes it, and tolerant beyond it.
//!
//! It is a pure function from a page to samples: no I/O, no clock. Label values may hold any text once
//! escaped (`\\`, `\"`, `\n`), including `,`, `=`, `{` and `}` (ipamd's `aws_utils_error_count{error=…}`
//! carries free error text). `name{}`, trailing commas, NaN/±Inf, optional timestamps, CRLF line ends and
//! a missing final newline are accepted. A malformed line is skipped and reported with its line number and
//! reason; it never panics and never loses the rest of the page. A missing timestamp stays missing.

use std::borrow::Cow;

use cni_metrics_proto::v1::FamilyType;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// In page order; values unescaped.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_ref())
    }
}

/// Why a line was rejected. Bounded set: used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("invalid metric name")]
    BadName,
    #[error("invalid label name")]
    BadLabelName,
    #[error("expected '=' after label name")]
    MissingEquals,
    #[error("expected '\"' to open a label value")]
    MissingQuote,
    #[error("unterminated label value")]
    UnterminatedValue,
    #[error("expected ',' or '}}' after a label value")]
    BadLabelSeparator,
    #[error("duplicate label name")]
    DuplicateLabel,
    #[error("missing sample value")]
    MissingValue,
    #[error("invalid sample value")]
    BadValue,
    #[error("invalid timestamp")]
    BadTimestamp,
    #[error("unexpected text after the timestamp")]
    TrailingText,
    #[error("malformed TYPE comment")]
    BadTypeLine,
}

/// A rejected line: its 1-based number and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub error: LineError,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

/// The first rejected lines in plain words ("line 4: invalid metric name; line 6: ...").
pub fn describe(bad: &[BadLine]) -> String {
    bad.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// The result of parsing one page.
#[derive(Debug, Default)]
pub struct Page<'a> {
    pub samples: Vec<Sample<'a>>,
    /// `# TYPE` declarations, in page order.
    pub types: Vec<(&'a str, FamilyType)>,
    /// Number of rejected lines.
    pub bad_lines: u32,
    /// The first few rejected lines, for logs.
    pub first_errors: Vec<BadLine>,
}

impl Page<'_> {
    pub fn declared_type(&self, family: &str) -> Option<FamilyType> {
        self.types.iter().rev().find(|(n, _)| *n == family).map(|(_, t)| *t)
    }
}

const MAX_REPORTED_ERRORS: usize = 5;

/// Parse a page. Never fails as a whole: bad lines are counted in [`Page::bad_lines`].
pub fn parse(text: &str) -> Page<'_> {
    let mut page = Page { samples: Vec::with_capacity(text.len() / 64), ..Page::default() };
    for (idx, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_matches(|c| c == ' ' || c == '\t');
        if line.is_empty() {
            continue;
        }
        let result = if let Some(comment) = line.strip_prefix('#') {
            parse_comment(comment).map(|t| {
                if let Some(t) = t {
                    page.types.push(t);
                }
            })
        } else {
            parse_sample(line).map(|s| page.samples.push(s))
        };
        if let Err(error) = result {
            page.bad_lines = page.bad_lines.saturating_add(1);
            if page.first_errors.len() < MAX_REPORTED_ERRORS {
                page.first_errors.push(BadLine { line: idx + 1, error });
            }
        }
    }
    page
}

/// `# TYPE name kind` yields a declaration; HELP and other comments are ignored.
fn parse_comment(comment: &str) -> Result<Option<(&str, FamilyType)>, LineError> {
    let mut words = comment.split_ascii_whitespace();
    if words.next() != Some("TYPE") {
        return Ok(None);
    }
    let (Some(name), Some(kind)) = (words.next(), words.next()) else {
        return Err(LineError::BadTypeLine);
    };
    if !is_metric_name(name) || words.next().is_some() {
        return Err(LineError::BadTypeLine);
    }
    let t = match kind {
        "counter" => FamilyType::Counter,
        "gauge" => FamilyType::Gauge,
        "summary" => FamilyType::Summary,
        "histogram" => FamilyType::Histogram,
        "untyped" | "unknown" => FamilyType::Untyped,
        _ => return Err(LineError::BadTypeLine),
    };
    Ok(Some((name, t)))
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

fn is_metric_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && is_name_start(b[0]) && b[1..].iter().all(|&c| is_name_char(c))
}

fn parse_sample(line: &str) -> Result<Sample<'_>, LineError> {
    let bytes = line.as_bytes();
    let mut i = 0;
    if bytes.first().is_none_or(|&b| !is_name_start(b)) {
        return Err(LineError::BadName);
    }
    while i < bytes.len() && is_name_char(bytes[i]) {
        i += 1;
    }
    let name = &line[..i];
    let mut labels = Vec::new();
    i = skip_ws(bytes, i);
    if bytes.get(i) == Some(&b'{') {
        i = parse_labels(line, i + 1, &mut labels)?;
    } else if i == name.len() && i < bytes.len() {
        // Neither '{' nor whitespace after the name.
        return Err(LineError::BadName);
    }
    let rest = &line[i..];
    let mut fields = rest.split_ascii_whitespace();
    let value = parse_value(fields.next().ok_or(LineError::MissingValue)?)?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(ts) => Some(ts.parse::<i64>().map_err(|_| LineError::BadTimestamp)?),
    };
    if fields.next().is_some() {
        return Err(LineError::TrailingText);
    }
    Ok(Sample { name, labels, value, timestamp_ms })
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    i
}

/// Parse `a="x",b="y"}` starting after the `{`; returns the index after the `}`.
fn parse_labels<'a>(line: &'a str, mut i: usize, labels: &mut Vec<(&'a str, Cow<'a, str>)>) -> Result<usize, LineError> {
    let b = line.as_bytes();
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'}') => return Ok(i + 1),
            None => return Err(LineError::UnterminatedValue),
            _ => {}
        }
        let start = i;
        if !is_name_start(b[i]) || b[i] == b':' {
            return Err(LineError::BadLabelName);
        }
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let lname = &line[start..i];
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'=') {
            return Err(LineError::MissingEquals);
        }
        i = skip_ws(b, i + 1);
        if b.get(i) != Some(&b'"') {
            return Err(LineError::MissingQuote);
        }
        let (value, next) = parse_quoted(line, i + 1)?;
        if labels.iter().any(|(n, _)| *n == lname) {
            return Err(LineError::DuplicateLabel);
        }
        labels.push((lname, value));
        i = skip_ws(b, next);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i + 1),
            None => return Err(LineError::UnterminatedValue),
            _ => return Err(LineError::BadLabelSeparator),
        }
    }
}

/// Parse an escaped label value starting after its opening quote; returns it and the index after the
/// closing quote. Borrowed unless an escape had to be undone.
fn parse_quoted(line: &str, start: usize) -> Result<(Cow<'_, str>, usize), LineError> {
    let b = line.as_bytes();
    let mut i = start;
    let mut owned: Option<String> = None;
    let mut run_start = start;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let value = match owned {
                    None => Cow::Borrowed(&line[start..i]),
                    Some(mut s) => {
                        s.push_str(&line[run_start..i]);
                        Cow::Owned(s)
                    }
                };
                return Ok((value, i + 1));
            }
            b'\\' => {
                let s = owned.get_or_insert_with(String::new);
                s.push_str(&line[run_start..i]);
                match b.get(i + 1) {
                    Some(b'\\') => s.push('\\'),
                    Some(b'"') => s.push('"'),
                    Some(b'n') => s.push('\n'),
                    // Unknown escape: keep it verbatim rather than lose the line.
                    Some(_) => {
                        s.push('\\');
                        run_start = i + 1;
                        i += 1;
                        continue;
                    }
                    None => return Err(LineError::UnterminatedValue),
                }
                i += 2;
                run_start = i;
            }
            _ => i += 1,
        }
    }
    Err(LineError::UnterminatedValue)
}

fn parse_value(s: &str) -> Result<f64, LineError> {
    // Rust accepts inf/infinity/nan in any case, as Go's ParseFloat does.
    s.parse::<f64>().map_err(|_| LineError::BadValue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Result<Sample<'_>, LineError> {
        parse_sample(line)
    }

    #[test]
    fn sample_lines_table() {
        struct Case {
            line: &'static str,
            name: &'static str,
            labels: &'static [(&'static str, &'static str)],
            value: f64,
            ts: Option<i64>,
        }
        let cases = [
            Case { line: "awscni_eni_max 4", name: "awscni_eni_max", labels: &[], value: 4.0, ts: None },
            Case { line: "awscni_eni_max{} 4", name: "awscni_eni_max", labels: &[], value: 4.0, ts: None },
            Case { line: "a{b=\"c\",} 1 1700000000000", name: "a", labels: &[("b", "c")], value: 1.0, ts: Some(1_700_000_000_000) },
            Case { line: "a { b = \"c\" , d=\"e\" } -2.5e3", name: "a", labels: &[("b", "c"), ("d", "e")], value: -2500.0, ts: None },
            Case {
                line: r#"awscni_aws_utils_error_count{error="operation error EC2: x={a,b} \"quoted\" \\ back\nline",fn="AllocENIDeleteErr"} 3"#,
                name: "awscni_aws_utils_error_count",
                labels: &[("error", "operation error EC2: x={a,b} \"quoted\" \\ back\nline"), ("fn", "AllocENIDeleteErr")],
                value: 3.0,
                ts: None,
            },
            Case { line: "x{le=\"+Inf\"} +Inf", name: "x", labels: &[("le", "+Inf")], value: f64::INFINITY, ts: None },
            Case { line: "x -Inf", name: "x", labels: &[], value: f64::NEG_INFINITY, ts: None },
            Case { line: "x{a=\"\"} 0", name: "x", labels: &[("a", "")], value: 0.0, ts: None },
            Case { line: "x{a=\"unknown \\t escape\"} 1", name: "x", labels: &[("a", "unknown \\t escape")], value: 1.0, ts: None },
            Case { line: "x{a=\"é ünïcode\"} 1", name: "x", labels: &[("a", "é ünïcode")], value: 1.0, ts: None },
        ];
        for c in cases {
            let s = one(c.line).unwrap_or_else(|e| panic!("{}: {e}", c.line));
            assert_eq!(s.name, c.name, "{}", c.line);
            let got: Vec<(&str, &str)> = s.labels.iter().map(|(n, v)| (*n, v.as_ref())).collect();
            assert_eq!(got, c.labels, "{}", c.line);
            assert_eq!(s.value, c.value, "{}", c.line);
            assert_eq!(s.timestamp_ms, c.ts, "{}", c.line);
        }
        assert!(one("x NaN").map(|s| s.value.is_nan()).unwrap_or(false));
    }

    #[test]
    fn bad_lines_table() {
        let cases = [
            ("9x 1", LineError::BadName),
            ("x{", LineError::UnterminatedValue),
            ("x{a=\"b} 1", LineError::UnterminatedValue),
            ("x{a} 1", LineError::MissingEquals),
            ("x{a=b} 1", LineError::MissingQuote),
            ("x{a=\"b\" c=\"d\"} 1", LineError::BadLabelSeparator),
            ("x{a=\"b\",a=\"c\"} 1", LineError::DuplicateLabel),
            ("x{1a=\"b\"} 1", LineError::BadLabelName),
            ("x", LineError::MissingValue),
            ("x{a=\"b\"}", LineError::MissingValue),
            ("x one", LineError::BadValue),
            ("x 1 soon", LineError::BadTimestamp),
            ("x 1 2 3", LineError::TrailingText),
            ("x-y 1", LineError::BadName),
        ];
        for (line, want) in cases {
            assert_eq!(one(line).err(), Some(want), "{line}");
        }
    }

    #[test]
    fn page_survives_bad_lines_crlf_and_no_final_newline() {
        let text = "# HELP a help text\r\n# TYPE a counter\r\na 1\r\n\u{0}\u{1}garbage\r\nb{x=\"1\"} 2\r\n# TYPE broken\r\nc 3";
        let page = parse(text);
        let names: Vec<_> = page.samples.iter().map(|s| (s.name, s.value)).collect();
        assert_eq!(names, vec![("a", 1.0), ("b", 2.0), ("c", 3.0)]);
        assert_eq!(page.bad_lines, 2);
        assert_eq!(page.first_errors[0], BadLine { line: 4, error: LineError::BadName });
        assert_eq!(page.first_errors[1], BadLine { line: 6, error: LineError::BadTypeLine });
        assert_eq!(page.declared_type("a"), Some(FamilyType::Counter));
    }

    #[test]
    fn empty_and_binary_pages_do_not_panic() {
        assert_eq!(parse("").samples.len(), 0);
        let garbage: String = (0u8..=255).map(char::from).cycle().take(10_000).collect();
        let page = parse(&garbage);
        assert!(page.bad_lines > 0);
        assert!(page.first_errors.len() <= MAX_REPORTED_ERRORS);
    }
}
