//! Durations in attribute options: `"250ms"`, `"2s"`, `"5m"`, `"1h"`.

use syn::LitStr;

/// Milliseconds in `lit`: a whole number followed by `ms`, `s`, `m` or `h` (spaces around
/// either are allowed). `option` names the option in the error message.
///
/// # Errors
/// Anything else, or a value too large for `u64` milliseconds, spanned at `lit`.
pub fn parse_millis(lit: &LitStr, option: &str) -> syn::Result<u64> {
    let text = lit.value();
    let invalid = || {
        syn::Error::new_spanned(
            lit,
            format!(
                "invalid duration {text:?} for `{option}`: expected a whole number followed by `ms`, `s`, `m` or `h`, e.g. \"2s\""
            ),
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    number.checked_mul(scale).ok_or_else(|| {
        syn::Error::new_spanned(lit, format!("duration {text:?} for `{option}` is too long"))
    })
}

/// Like [`parse_millis`], for options where zero makes no sense (a lease, a TTL).
///
/// # Errors
/// As [`parse_millis`], and for zero.
pub fn parse_positive_millis(lit: &LitStr, option: &str) -> syn::Result<u64> {
    match parse_millis(lit, option)? {
        0 => Err(syn::Error::new_spanned(
            lit,
            format!("`{option}` must be longer than zero"),
        )),
        millis => Ok(millis),
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::Span;
    use syn::LitStr;

    use super::{parse_millis, parse_positive_millis};

    fn millis(text: &str) -> syn::Result<u64> {
        parse_millis(&LitStr::new(text, Span::call_site()), "wait")
    }

    #[test]
    fn units_scale_to_millis() {
        assert_eq!(millis("250ms").ok(), Some(250));
        assert_eq!(millis("2s").ok(), Some(2_000));
        assert_eq!(millis("3m").ok(), Some(180_000));
        assert_eq!(millis("1h").ok(), Some(3_600_000));
        assert_eq!(millis(" 3 s ").ok(), Some(3_000));
        assert_eq!(millis("0s").ok(), Some(0));
    }

    #[test]
    fn malformed_durations_are_rejected() {
        for bad in [
            "",
            "s",
            "2",
            "2 sec",
            "1.5s",
            "-1s",
            "2S",
            "10 days",
            "60 seconds",
        ] {
            let error = millis(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(
                error.to_string().contains("invalid duration"),
                "{bad:?}: {error}"
            );
        }
        // The number itself does not fit a u64: malformed, like any other unreadable number.
        let error = millis("99999999999999999999h").expect_err("overflows u64");
        assert!(error.to_string().contains("invalid duration"), "{error}");
        let error = millis("9999999999999999h").expect_err("overflows u64 milliseconds");
        assert!(error.to_string().contains("too long"), "{error}");
    }

    #[test]
    fn zero_is_rejected_where_it_makes_no_sense() {
        let zero = LitStr::new("0ms", Span::call_site());
        let error = parse_positive_millis(&zero, "lease").expect_err("zero lease");
        assert_eq!(error.to_string(), "`lease` must be longer than zero");
    }
}
