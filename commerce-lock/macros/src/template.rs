//! Lock key templates: `"stock:{product_id}"`, `"cart:{order.user_id}"`.

/// One `{...}` placeholder: an argument name followed by field names or tuple indices.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Placeholder {
    pub(crate) root: String,
    pub(crate) fields: Vec<String>,
}

/// A template split into a `format!` string (with `{}` per placeholder) and the placeholders.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Template {
    pub(crate) format: String,
    pub(crate) placeholders: Vec<Placeholder>,
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_placeholder(inner: &str) -> Result<Placeholder, String> {
    let mut parts = inner.trim().split('.');
    let root = parts.next().unwrap_or_default().trim();
    if !is_identifier(root) {
        return Err(format!(
            "`{{{inner}}}` in the key template must start with an argument name"
        ));
    }
    let mut fields = Vec::new();
    for field in parts {
        let field = field.trim();
        let is_index = !field.is_empty() && field.chars().all(|c| c.is_ascii_digit());
        if !is_identifier(field) && !is_index {
            return Err(format!(
                "`{{{inner}}}` in the key template: `{field}` is not a field name"
            ));
        }
        fields.push(field.to_owned());
    }
    Ok(Placeholder {
        root: root.to_owned(),
        fields,
    })
}

/// Parses `text`; `{{` and `}}` stand for literal braces.
pub(crate) fn parse(text: &str) -> Result<Template, String> {
    let mut format = String::new();
    let mut placeholders = Vec::new();
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
                    return Err(format!("unclosed `{{` in the key template {text:?}"));
                }
                placeholders.push(parse_placeholder(&inner)?);
                format.push_str("{}");
            }
            '}' => {
                return Err(format!(
                    "unmatched `}}` in the key template {text:?} (write `}}}}` for a brace)"
                ))
            }
            other => format.push(other),
        }
    }
    if format.is_empty() {
        return Err("the lock key template is empty".to_owned());
    }
    Ok(Template {
        format,
        placeholders,
    })
}

#[cfg(test)]
mod tests {
    use super::{parse, Placeholder};

    #[test]
    fn placeholders_become_format_arguments() {
        let template = parse("stock:{product_id}:{ order.user_id }:{pair.0}").unwrap();
        assert_eq!(template.format, "stock:{}:{}:{}");
        assert_eq!(
            template.placeholders,
            vec![
                Placeholder {
                    root: "product_id".into(),
                    fields: vec![]
                },
                Placeholder {
                    root: "order".into(),
                    fields: vec!["user_id".into()]
                },
                Placeholder {
                    root: "pair".into(),
                    fields: vec!["0".into()]
                },
            ]
        );
    }

    #[test]
    fn doubled_braces_are_literal() {
        let template = parse("a{{b}}").unwrap();
        assert_eq!(template.format, "a{{b}}");
        assert!(template.placeholders.is_empty());
    }

    #[test]
    fn malformed_templates_are_rejected() {
        for bad in [
            "",
            "stock:{",
            "stock:}",
            "stock:{}",
            "stock:{1x}",
            "stock:{a.b-c}",
            "{a.}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
