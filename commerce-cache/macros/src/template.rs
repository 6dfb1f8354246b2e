//! Key templates: `"product:{id}"`, `"orders:{q.user_id}:{q.page}"`, `{{`/`}}` for braces.
//!
//! Each placeholder is an argument of the function (or `self`), optionally followed by
//! fields; it is formatted with `Display`.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{Expr, LitStr};

/// A checked template, ready for `format!`.
pub(crate) struct KeyTemplate {
    /// The `format!` string: literal text with braces escaped, `{}` per placeholder.
    pub(crate) format: String,
    /// One expression per placeholder, spanned at the template literal.
    pub(crate) args: Vec<TokenStream>,
}

/// Parses `lit` and checks every placeholder against `arguments` (the function's argument
/// names, `self` included for methods).
pub(crate) fn parse(lit: &LitStr, arguments: &[String]) -> syn::Result<KeyTemplate> {
    let text = lit.value();
    let mut format = String::with_capacity(text.len());
    let mut args = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                format.push_str("{{");
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                format.push_str("}}");
            }
            '{' => {
                let mut placeholder = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    placeholder.push(c);
                }
                if !closed {
                    return Err(error(
                        lit,
                        "unclosed `{` in key template (use `{{` for a literal brace)",
                    ));
                }
                args.push(placeholder_expr(lit, placeholder.trim(), arguments)?);
                format.push_str("{}");
            }
            '}' => {
                return Err(error(
                    lit,
                    "unmatched `}` in key template (use `}}` for a literal brace)",
                ));
            }
            c => format.push(c),
        }
    }
    if args.is_empty() {
        return Err(error(
            lit,
            "key template has no placeholder: every call would share one key; refer to an argument, e.g. \"product:{id}\"",
        ));
    }
    Ok(KeyTemplate { format, args })
}

fn placeholder_expr(
    lit: &LitStr,
    placeholder: &str,
    arguments: &[String],
) -> syn::Result<TokenStream> {
    if placeholder.contains(':') {
        return Err(error(
            lit,
            format!("`{{{placeholder}}}`: format specs are not supported in key templates; values are formatted with `Display`"),
        ));
    }
    let expr: Expr = syn::parse_str(placeholder).map_err(|_| {
        error(
            lit,
            format!("`{{{placeholder}}}` is not an argument name or a field path like `q.user_id`"),
        )
    })?;
    let root = root_name(&expr).ok_or_else(|| {
        error(
            lit,
            format!("`{{{placeholder}}}` is not an argument name or a field path like `q.user_id`"),
        )
    })?;
    if !arguments.contains(&root) {
        let known = if arguments.is_empty() {
            "it has none".to_owned()
        } else {
            format!("arguments: {}", arguments.join(", "))
        };
        return Err(error(
            lit,
            format!("key template refers to `{root}`, which is not an argument of this function ({known})"),
        ));
    }
    Ok(respan(expr.into_token_stream(), lit.span()))
}

/// `a` for `a`, `a.b`, `a.b.0`; `None` for anything else (calls, indexing, literals).
fn root_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => {
            path.path.get_ident().map(ToString::to_string)
        }
        Expr::Field(field) => root_name(&field.base),
        _ => None,
    }
}

/// Points the generated tokens at the template, so type errors (a missing field, a value
/// without `Display`) are reported there.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

fn error(lit: &LitStr, message: impl std::fmt::Display) -> syn::Error {
    syn::Error::new_spanned(lit, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> syn::Result<KeyTemplate> {
        let arguments = ["id".to_owned(), "q".to_owned(), "self".to_owned()];
        parse(&LitStr::new(text, Span::call_site()), &arguments)
    }

    fn args(template: &KeyTemplate) -> Vec<String> {
        template
            .args
            .iter()
            .map(|arg| arg.to_string().replace(' ', ""))
            .collect()
    }

    #[test]
    fn composite_keys_over_arguments_and_fields() {
        let parsed = template("orders:{q.user_id}:{q.page}:{ id }:{self.tenant}").unwrap();
        assert_eq!(parsed.format, "orders:{}:{}:{}:{}");
        assert_eq!(args(&parsed), ["q.user_id", "q.page", "id", "self.tenant"]);
    }

    #[test]
    fn doubled_braces_are_literal() {
        let parsed = template("{{raw}}:{id}").unwrap();
        assert_eq!(parsed.format, "{{raw}}:{}");
    }

    #[test]
    fn unknown_arguments_and_bad_placeholders_are_rejected() {
        for (bad, message) in [
            ("product:{sku}", "not an argument"),
            ("product:{id", "unclosed"),
            ("product:}{id}", "unmatched"),
            ("product:{id:?}", "format specs"),
            ("product:{id()}", "not an argument name"),
            ("product", "no placeholder"),
        ] {
            let error = template(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(error.to_string().contains(message), "{bad:?}: {error}");
        }
    }
}
