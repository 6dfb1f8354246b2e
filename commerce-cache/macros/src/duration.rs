//! `ttl = "60s"`: a whole number and a unit.

use syn::LitStr;

/// The duration in milliseconds, or an error pointing at the literal.
pub(crate) fn parse_millis(lit: &LitStr) -> syn::Result<u64> {
    let text = lit.value();
    let invalid = || {
        syn::Error::new_spanned(
            lit,
            format!(
                "invalid ttl {text:?}: expected a whole number followed by `ms`, `s`, `m` or `h`, e.g. \"60s\""
            ),
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    let millis = number.checked_mul(factor).ok_or_else(invalid)?;
    if millis == 0 {
        return Err(syn::Error::new_spanned(
            lit,
            "ttl must be greater than zero",
        ));
    }
    Ok(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(text: &str) -> Option<u64> {
        parse_millis(&LitStr::new(text, proc_macro2::Span::call_site())).ok()
    }

    #[test]
    fn units() {
        assert_eq!(millis("250ms"), Some(250));
        assert_eq!(millis("60s"), Some(60_000));
        assert_eq!(millis("5m"), Some(300_000));
        assert_eq!(millis("2h"), Some(7_200_000));
        assert_eq!(millis(" 3 s "), Some(3_000));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "60",
            "s",
            "1.5s",
            "10 days",
            "0s",
            "-1s",
            "99999999999999999999h",
        ] {
            assert_eq!(millis(bad), None, "{bad:?}");
        }
    }
}
