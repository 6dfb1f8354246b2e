//! Compile-time parsing of durations such as `"2s"` or `"500ms"`.

/// Milliseconds in `text`: an integer followed by `ms`, `s`, `m` or `h`.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let explain = || {
        format!("invalid duration {text:?}: expected a whole number followed by `ms`, `s`, `m` or `h`, e.g. \"2s\"")
    };
    let number: u64 = number.parse().map_err(|_| explain())?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(explain()),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn units_scale_to_millis() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("2s"), Ok(2_000));
        assert_eq!(parse_millis("3m"), Ok(180_000));
        assert_eq!(parse_millis("1h"), Ok(3_600_000));
    }

    #[test]
    fn malformed_durations_are_rejected() {
        for bad in ["", "s", "2", "2 sec", "1.5s", "-1s", "2S"] {
            assert!(parse_millis(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
