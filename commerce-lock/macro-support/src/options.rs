//! The option-list rules both attributes follow: each option at most once, unknown options
//! named with the list of known ones, missing required options reported at the attribute.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;

/// Stores `value` in `slot` unless the option was given before.
///
/// # Errors
/// When `slot` is already filled, spanned at this (the repeated) occurrence of the option:
/// silently keeping the first or the last would hide a typo or a merge mistake.
pub fn set_once<T>(slot: &mut Option<T>, value: T, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if slot.is_some() {
        let name = option_name(meta);
        return Err(syn::Error::new_spanned(
            &meta.path,
            format!("`{name}` is given twice; give each option once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// The error for an option `attribute` does not know, spanned at its name.
#[must_use]
pub fn unknown(meta: &ParseNestedMeta<'_>, attribute: &str, known: &[&str]) -> syn::Error {
    let name = option_name(meta);
    syn::Error::new_spanned(
        &meta.path,
        format!(
            "unknown option `{name}` for `#[{attribute}]`; expected one of: {}",
            known.join(", ")
        ),
    )
}

/// The error for a required option that is missing, spanned at the whole attribute (there is
/// no token to point at).
#[must_use]
pub fn missing(attribute: &str, option: &str, example: &str) -> syn::Error {
    syn::Error::new(
        Span::call_site(),
        format!("`#[{attribute}]` needs `{option}`, e.g. `{example}`"),
    )
}

fn option_name(meta: &ParseNestedMeta<'_>) -> String {
    meta.path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

#[cfg(test)]
mod tests {
    use syn::parse::Parser;
    use syn::LitStr;

    use super::{set_once, unknown};

    fn parse(tokens: proc_macro2::TokenStream) -> syn::Result<Option<String>> {
        let mut key = None;
        syn::meta::parser(|meta| {
            if meta.path.is_ident("key") {
                let value: LitStr = meta.value()?.parse()?;
                set_once(&mut key, value.value(), &meta)
            } else {
                Err(unknown(&meta, "test", &["key"]))
            }
        })
        .parse2(tokens)?;
        Ok(key)
    }

    #[test]
    fn an_option_given_once_is_kept() {
        assert_eq!(
            parse(quote::quote!(key = "a")).ok(),
            Some(Some("a".to_owned()))
        );
    }

    #[test]
    fn an_option_given_twice_is_an_error() {
        let error = parse(quote::quote!(key = "a", key = "b")).expect_err("repeated");
        assert_eq!(
            error.to_string(),
            "`key` is given twice; give each option once"
        );
    }

    #[test]
    fn unknown_options_list_the_known_ones() {
        let error = parse(quote::quote!(ttl = "1s")).expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "unknown option `ttl` for `#[test]`; expected one of: key"
        );
    }
}
