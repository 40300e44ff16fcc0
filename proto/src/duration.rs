//! Parsing of the duration knobs: plain seconds as upstream's `METRIC_UPDATE_INTERVAL` takes them (`30`),
//! or a unit suffix (`500ms`, `2s`, `5m`, `1h`, `1m30s`). Zero, negative and malformed values are errors
//! that name the value, never a silent default. So are durations above [`MAX`] (365 days): no knob needs
//! more, and a larger one would overflow the clock arithmetic that uses it (found by fuzzing `flags`).

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("duration {0:?} must be positive")]
    NotPositive(String),
    #[error("invalid duration {0:?}: use seconds (30) or a unit: 500ms, 2s, 5m, 1h, 1m30s")]
    Invalid(String),
    #[error("duration {0:?} is too long: at most 365 days (8760h)")]
    TooLong(String),
}

/// The longest duration any knob accepts.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parse a strictly positive duration.
pub fn parse_positive(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    if t.starts_with('-') {
        return Err(DurationError::NotPositive(t.to_owned()));
    }
    let invalid = || DurationError::Invalid(t.to_owned());
    let too_long = || DurationError::TooLong(t.to_owned());
    let total = if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() {
            return Err(invalid());
        }
        Duration::try_from_secs_f64(secs).map_err(|_| too_long())?
    } else {
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(invalid)?;
            if num_end == 0 {
                return Err(invalid());
            }
            let n: f64 = rest[..num_end].parse().map_err(|_| invalid())?;
            let after = &rest[num_end..];
            let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
            let scale = match &after[..unit_end] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(invalid()),
            };
            let part = Duration::try_from_secs_f64(n * scale).map_err(|_| too_long())?;
            total = total.checked_add(part).filter(|d| *d <= MAX).ok_or_else(too_long)?;
            rest = &after[unit_end..];
        }
        total
    };
    if total.is_zero() {
        return Err(DurationError::NotPositive(t.to_owned()));
    }
    if total > MAX {
        return Err(too_long());
    }
    Ok(total)
}

/// A duration in the flags' own notation, for people: `500ms`, `2s`, `5m`, `1h`, `1m30s`, `1.5s`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if !ms.is_multiple_of(1000) {
        return format!("{}s", d.as_secs_f64());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (v, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_as_the_flags_take_them() {
        for (ms, text) in
            [(500, "500ms"), (1000, "1s"), (1500, "1.5s"), (300_000, "5m"), (90_000, "1m30s"), (3_600_000, "1h"), (3_661_000, "1h1m1s")]
        {
            let d = Duration::from_millis(ms);
            assert_eq!(format(d), text);
            assert_eq!(parse_positive(text), Ok(d), "{text} parses back");
        }
    }

    #[test]
    fn table() {
        let ok = [
            ("30", 30_000),
            (" 30 ", 30_000),
            ("0.5", 500),
            ("500ms", 500),
            ("2s", 2_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("8760h", 31_536_000_000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_positive(s).map(|d| d.as_millis()), Ok(ms), "{s}");
        }
        let bad = [
            ("", DurationError::Empty),
            ("0", DurationError::NotPositive("0".into())),
            ("0s", DurationError::NotPositive("0s".into())),
            ("-5", DurationError::NotPositive("-5".into())),
            ("5x", DurationError::Invalid("5x".into())),
            ("s", DurationError::Invalid("s".into())),
            ("inf", DurationError::Invalid("inf".into())),
            ("NaN", DurationError::Invalid("NaN".into())),
            ("8761h", DurationError::TooLong("8761h".into())),
            ("1e300", DurationError::TooLong("1e300".into())),
            // Found by fuzzing: the sum of two parts overflowed `Duration` and panicked.
            ("18446744073709551615s18446744073709551615s", DurationError::TooLong("18446744073709551615s18446744073709551615s".into())),
        ];
        for (s, e) in bad {
            assert_eq!(parse_positive(s), Err(e), "{s}");
        }
    }
}
