//! Parsing of on/off switches shared by both binaries: yes/true/1/on or no/false/0/off in any case, like
//! upstream's `USE_CLOUDWATCH`, except that anything else is an error instead of being silently ignored.

/// Parse a switch value.
pub fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        other => Err(format!("{other:?} is not one of yes/true/no/false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        for (s, want) in [("yes", Ok(true)), ("TRUE", Ok(true)), ("1", Ok(true)), ("No", Ok(false)), ("off", Ok(false))] {
            assert_eq!(parse_switch(s), want, "{s}");
        }
        assert!(parse_switch("ture").is_err());
        assert!(parse_switch("").is_err());
    }
}
