//! Human-readable durations for flags and config (`30s`, `1500ms`, `2m`).

use std::time::Duration;

/// Parses `30s`, `1500ms`, `2m 30s` (humantime syntax) or a bare number of milliseconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (examples: 30s, 1500ms, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_millis() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("250").unwrap(), Duration::from_millis(250));
        let err = parse("soon").unwrap_err();
        assert!(err.contains("soon"), "{err}");
    }
}
