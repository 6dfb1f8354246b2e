//! Key templates: `"stock:{product_id}"`, `"orders:{q.user_id}:{q.page}"`, `"nightly-report"`.
//!
//! A placeholder is an argument name (or `self`) followed by field names or tuple indices;
//! `{{` and `}}` are literal braces. The generated code writes each placeholder's value with
//! `Display` through the runtime's `KeyPart`, which escapes `\` as `\\` and `:` as `\:`. With
//! that escaping, a `:` in the template's own text between two placeholders marks where one
//! value ends, so two different argument tuples cannot give one key; that is why two
//! placeholders must have such a `:` between them.

use proc_macro2::{Span, TokenStream};
use quote::quote_spanned;
use syn::{Ident, Index, LitStr, Member};

/// One `{...}`: an argument (or `self`) and the fields read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// The argument, spanned at the template.
    pub root: Ident,
    /// Field names and tuple indices after it, in order.
    pub fields: Vec<Member>,
}

/// A checked key template.
#[derive(Debug, Clone)]
pub struct Template {
    /// The text around the placeholders, braces unescaped: one piece more than placeholders.
    literals: Vec<String>,
    placeholders: Vec<Placeholder>,
    span: Span,
}

impl Template {
    /// The placeholders, in order.
    #[must_use]
    pub fn placeholders(&self) -> &[Placeholder] {
        &self.placeholders
    }

    /// The expression that builds the key: `::std::format!` over the literal text, with each
    /// placeholder's value wrapped as `key_part(&value)` (the runtime's escaping `Display`
    /// wrapper, named by absolute path). Spanned at the template, so a value without
    /// `Display` or a missing field is reported there.
    #[must_use]
    pub fn key_expression(&self, key_part: &TokenStream) -> TokenStream {
        let span = self.span;
        let format = LitStr::new(&self.format_string(), span);
        let values = self.placeholders.iter().map(|placeholder| {
            let root = &placeholder.root;
            let fields = &placeholder.fields;
            quote_spanned!(span=> #key_part(&(#root #(.#fields)*)))
        });
        quote_spanned!(span=> ::std::format!(#format #(, #values)*))
    }

    /// The `format!` string: the literal text with braces doubled, `{}` per placeholder.
    fn format_string(&self) -> String {
        let mut format = String::new();
        for (index, literal) in self.literals.iter().enumerate() {
            if index > 0 {
                format.push_str("{}");
            }
            format.push_str(&literal.replace('{', "{{").replace('}', "}}"));
        }
        format
    }
}

/// Parses `lit` and checks every placeholder against `arguments` (the function's argument
/// names, `self` included for methods; see [`crate::argument_names`]).
///
/// # Errors
/// An empty template, an unclosed `{` or unmatched `}`, a placeholder that is not an argument
/// path, a format spec (`{id:?}`), an unknown argument, or two placeholders without a literal
/// `:` between them; every error is spanned at `lit`.
pub fn parse(lit: &LitStr, arguments: &[String]) -> syn::Result<Template> {
    let text = lit.value();
    if text.is_empty() {
        return Err(error(lit, "the key template is empty"));
    }
    let mut literals = vec![String::new()];
    let mut placeholders: Vec<Placeholder> = Vec::new();
    let mut separator = Separator::default();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let literal = match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                '{'
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                '}'
            }
            '{' => {
                let mut inner = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    inner.push(c);
                }
                if !closed {
                    return Err(error(
                        lit,
                        "unclosed `{` in the key template (write `{{` for a literal brace)",
                    ));
                }
                let placeholder = parse_placeholder(lit, &inner, arguments)?;
                if let Some(previous) = placeholders.last() {
                    if !separator.seen {
                        return Err(error(
                            lit,
                            format!(
                                "`{}` and `{}` must have a `:` between them in the key template: values are escaped so that only the template's own `:` can end one, which keeps every call's key distinct (e.g. \"{{{}}}:{{{}}}\")",
                                shown(previous),
                                shown(&placeholder),
                                path(previous),
                                path(&placeholder),
                            ),
                        ));
                    }
                }
                placeholders.push(placeholder);
                literals.push(String::new());
                separator = Separator::default();
                continue;
            }
            '}' => {
                return Err(error(
                    lit,
                    "unmatched `}` in the key template (write `}}` for a literal brace)",
                ));
            }
            other => other,
        };
        separator.push(literal);
        if let Some(last) = literals.last_mut() {
            last.push(literal);
        }
    }
    Ok(Template {
        literals,
        placeholders,
        span: lit.span(),
    })
}

/// Whether the literal text since the last placeholder holds a `:` that is not itself
/// escaped by a `\` in that text (read with the same rule the runtime escapes values by).
#[derive(Default)]
struct Separator {
    seen: bool,
    escaping: bool,
}

impl Separator {
    fn push(&mut self, c: char) {
        if self.escaping {
            self.escaping = false;
        } else if c == '\\' {
            self.escaping = true;
        } else if c == ':' {
            self.seen = true;
        }
    }
}

fn parse_placeholder(lit: &LitStr, inner: &str, arguments: &[String]) -> syn::Result<Placeholder> {
    let trimmed = inner.trim();
    if trimmed.contains(':') {
        return Err(error(
            lit,
            format!("`{{{inner}}}`: format specs are not supported in key templates; values are written with `Display`"),
        ));
    }
    let not_a_path = || {
        error(
            lit,
            format!("`{{{inner}}}` is not an argument name or a field path such as `q.user_id` or `pair.0`"),
        )
    };
    let span = lit.span();
    let mut parts = trimmed.split('.').map(str::trim);
    let root_text = parts.next().unwrap_or_default();
    let mut root = if root_text == "self" {
        Ident::new("self", span)
    } else {
        syn::parse_str::<Ident>(root_text).map_err(|_| not_a_path())?
    };
    root.set_span(span);
    let mut fields = Vec::new();
    for part in parts {
        let field = if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            let index = part.parse::<u32>().map_err(|_| not_a_path())?;
            Member::Unnamed(Index { index, span })
        } else {
            let mut name = syn::parse_str::<Ident>(part).map_err(|_| not_a_path())?;
            name.set_span(span);
            Member::Named(name)
        };
        fields.push(field);
    }
    let root_name = root.to_string();
    if !arguments.contains(&root_name) {
        let known = if arguments.is_empty() {
            "it has none".to_owned()
        } else {
            format!("arguments: {}", arguments.join(", "))
        };
        return Err(error(
            lit,
            format!("the key template refers to `{root_name}`, which is not an argument of this function ({known})"),
        ));
    }
    Ok(Placeholder { root, fields })
}

fn path(placeholder: &Placeholder) -> String {
    let mut path = placeholder.root.to_string();
    for field in &placeholder.fields {
        path.push('.');
        match field {
            Member::Named(name) => path.push_str(&name.to_string()),
            Member::Unnamed(index) => path.push_str(&index.index.to_string()),
        }
    }
    path
}

fn shown(placeholder: &Placeholder) -> String {
    format!("{{{}}}", path(placeholder))
}

fn error(lit: &LitStr, message: impl std::fmt::Display) -> syn::Error {
    syn::Error::new_spanned(lit, message)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proc_macro2::Span;
    use syn::LitStr;

    use super::{parse, path, Template};

    fn template(text: &str) -> syn::Result<Template> {
        let arguments = ["id", "q", "pair", "self", "a", "b"].map(str::to_owned);
        parse(&LitStr::new(text, Span::call_site()), &arguments)
    }

    fn paths(template: &Template) -> Vec<String> {
        template.placeholders().iter().map(path).collect()
    }

    /// The documented runtime rule (the runtimes' `KeyPart`), for checking the grammar
    /// against it.
    fn escape(value: &str) -> String {
        value.replace('\\', r"\\").replace(':', r"\:")
    }

    fn render(template: &Template, values: &[&str]) -> String {
        let mut key = template.literals[0].clone();
        for (value, literal) in values.iter().zip(&template.literals[1..]) {
            key.push_str(&escape(value));
            key.push_str(literal);
        }
        key
    }

    #[test]
    fn placeholders_are_arguments_fields_and_indices() {
        let parsed = template("orders:{q.user_id}:{ q . page }:{ id }:{self.tenant}:{pair.0}")
            .expect("valid");
        assert_eq!(parsed.format_string(), "orders:{}:{}:{}:{}:{}");
        assert_eq!(
            paths(&parsed),
            ["q.user_id", "q.page", "id", "self.tenant", "pair.0"]
        );
    }

    #[test]
    fn doubled_braces_are_literal() {
        let parsed = template("{{raw}}:{id}").expect("valid");
        assert_eq!(parsed.format_string(), "{{raw}}:{}");
        assert_eq!(render(&parsed, &["7"]), "{raw}:7");
    }

    #[test]
    fn a_template_without_placeholders_is_a_constant_key() {
        let parsed = template("nightly-report").expect("valid");
        assert!(parsed.placeholders().is_empty());
        assert_eq!(parsed.format_string(), "nightly-report");
    }

    #[test]
    fn the_key_expression_wraps_every_value() {
        let parsed = template("cart:{q.user_id}:{pair.0}").expect("valid");
        let expression = parsed
            .key_expression(&quote::quote!(::rt::KeyPart))
            .to_string()
            .replace(' ', "");
        assert_eq!(
            expression,
            r#"::std::format!("cart:{}:{}",::rt::KeyPart(&(q.user_id)),::rt::KeyPart(&(pair.0)))"#
        );
    }

    #[test]
    fn malformed_templates_are_rejected_with_the_reason() {
        for (bad, reason) in [
            ("", "is empty"),
            ("product:{id", "unclosed"),
            ("product:}{id}", "unmatched"),
            ("product:{}", "not an argument name"),
            ("product:{id()}", "not an argument name"),
            ("product:{1x}", "not an argument name"),
            ("product:{q.b-c}", "not an argument name"),
            ("product:{q.}", "not an argument name"),
            ("product:{id:?}", "format specs"),
            ("product:{sku}", "not an argument of this function"),
            ("{a}{b}", "must have a `:` between them"),
            ("{a}-{b}", "must have a `:` between them"),
            (r"{a}\:{b}", "must have a `:` between them"),
        ] {
            let error = template(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(error.to_string().contains(reason), "{bad:?}: {error}");
        }
    }

    /// Every value string of up to three characters over an alphabet holding the separator,
    /// the escape character and a character of the template's own text.
    fn values() -> Vec<String> {
        let alphabet = ['a', '-', ':', '\\'];
        let mut values = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..3 {
            last = last
                .iter()
                .flat_map(|prefix| alphabet.iter().map(move |c| format!("{prefix}{c}")))
                .collect();
            values.extend(last.iter().cloned());
        }
        values
    }

    /// The first two argument pairs found that give one key, if any.
    fn collision(template: &Template) -> Option<((String, String), (String, String))> {
        let values = values();
        let mut seen: HashMap<String, (String, String)> = HashMap::new();
        for a in &values {
            for b in &values {
                let key = render(template, &[a, b]);
                if let Some(earlier) = seen.insert(key, (a.clone(), b.clone())) {
                    return Some((earlier, (a.clone(), b.clone())));
                }
            }
        }
        None
    }

    /// The rule is sound (accepted templates never collide) and not needlessly strict (the
    /// rejected shapes do collide).
    #[test]
    fn accepted_templates_give_every_argument_pair_its_own_key() {
        for accepted in [
            "{a}:{b}",
            "x:{a}::{b}:y",
            r"{a}\\:{b}",
            r"{a}:\{b}",
            "{a}-x:y-{b}",
            "{a}:{b}{{}}",
        ] {
            let parsed = template(accepted).expect("valid");
            assert_eq!(collision(&parsed), None, "{accepted:?}");
        }
        for rejected in ["{a}{b}", "{a}-{b}", r"{a}\:{b}"] {
            let unchecked = Template {
                literals: rejected
                    .split(['{', '}'])
                    .enumerate()
                    .filter(|(index, _)| index % 2 == 0)
                    .map(|(_, literal)| literal.to_owned())
                    .collect(),
                placeholders: Vec::new(),
                span: Span::call_site(),
            };
            assert!(collision(&unchecked).is_some(), "{rejected:?} is safe");
        }
    }
}
