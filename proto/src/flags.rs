//! The flag value parsers both binaries share, so a value means the same in every flag:
//! - [`parse_switch`]: on/off switches take yes/true/1/on or no/false/0/off in any case, like upstream's
//!   `USE_CLOUDWATCH`, except that anything else is an error instead of being silently ignored;
//! - [`non_blank`]: a blank value ("" or spaces, e.g. an environment variable a manifest sets to "")
//!   means unset, never a value called "";
//! - [`at_least`]: a number with a floor, refused below it with the floor in words.

use std::fmt::Display;
use std::str::FromStr;

/// Parse a switch value.
pub fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        other => Err(format!("{other:?} is not one of yes/true/no/false")),
    }
}

/// A flag value that may be unset ([`non_blank`] parses it). Declared with `default_value = ""`, so the
/// flag always has a value and blank is the one way to say "unset".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NonBlank<T>(Option<T>);

impl<T> NonBlank<T> {
    pub fn new(value: Option<T>) -> Self {
        Self(value)
    }

    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }

    pub fn into_option(self) -> Option<T> {
        self.0
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

/// The one parser of values where blank means unset: blank gives [`NonBlank`] of `None`, anything else
/// `T`'s own parsing (untrimmed).
pub fn non_blank<T>(s: &str) -> Result<NonBlank<T>, String>
where
    T: FromStr,
    T::Err: Display,
{
    blank_or(|s: &str| s.parse::<T>().map_err(|e| format!("{s:?}: {e}")))(s)
}

/// [`non_blank`] with another parser for the value (a duration, a bounded number).
pub fn blank_or<T, E: Display>(
    parse: impl Fn(&str) -> Result<T, E> + Clone + Send + Sync + 'static,
) -> impl Fn(&str) -> Result<NonBlank<T>, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        if s.trim().is_empty() {
            return Ok(NonBlank(None));
        }
        parse(s).map(|v| NonBlank(Some(v))).map_err(|e| e.to_string())
    }
}

/// A parser of numbers of at least `min`; `what` says the floor in words ("64 KiB").
pub fn at_least<T>(min: T, what: &'static str) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + Copy + Send + Sync + 'static,
    T::Err: Display,
{
    move |s: &str| {
        let v: T = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
        if v < min {
            return Err(format!("{s} is too small: at least {what}"));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_is_unset_and_the_rest_parses() {
        // (value, parsed)
        let cases: [(&str, Result<NonBlank<u16>, ()>); 5] =
            [("", Ok(NonBlank(None))), ("   ", Ok(NonBlank(None))), ("80", Ok(NonBlank(Some(80)))), ("x", Err(())), ("70000", Err(()))];
        for (s, want) in cases {
            assert_eq!(non_blank::<u16>(s).map_err(|_| ()), want, "{s:?}");
        }
        assert_eq!(non_blank::<String>(" a ").map(NonBlank::into_option), Ok(Some(" a ".to_owned())), "kept as given");
    }

    #[test]
    fn floors_are_said_in_words() {
        let p = at_least::<usize>(1024, "1 KiB");
        assert_eq!(p("1024"), Ok(1024));
        assert_eq!(p("1023"), Err("1023 is too small: at least 1 KiB".to_owned()));
        assert!(p("-1").is_err() && p("lots").is_err());
    }

    #[test]
    fn table() {
        for (s, want) in [("yes", Ok(true)), ("TRUE", Ok(true)), ("1", Ok(true)), ("No", Ok(false)), ("off", Ok(false))] {
            assert_eq!(parse_switch(s), want, "{s}");
        }
        assert!(parse_switch("ture").is_err());
        assert!(parse_switch("").is_err());
    }
}
