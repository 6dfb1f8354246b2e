//! The run-time half of the key grammar: how the generated code writes a placeholder's value.

use std::fmt;

/// One placeholder's value in a generated key: its `Display`, with `\` written as `\\` and
/// `:` as `\:`. The macro grammar puts a `:` of the template's own text between any two
/// placeholders, so with this escaping different argument tuples never share a key
/// (`"{a}:{b}"` keeps ("x:y", "z") and ("x", "y:z") apart, which would otherwise serve one
/// user's entry to another; see `docs/decisions/0007-one-macro-grammar.md`). Lock keys and
/// cache keys use this one rule.
pub struct KeyPart<'a, T: ?Sized>(pub &'a T);

impl<T: fmt::Display + ?Sized> fmt::Display for KeyPart<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Write::write_fmt(&mut Escaped(f), format_args!("{}", self.0))
    }
}

impl<T: fmt::Display + ?Sized> fmt::Debug for KeyPart<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyPart")
            .field(&format_args!("{self}"))
            .finish()
    }
}

/// Escapes what a value writes, piece by piece, without an intermediate `String`.
struct Escaped<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, mut text: &str) -> fmt::Result {
        while let Some(at) = text.find([':', '\\']) {
            // Both are one byte long, so slicing after the first byte stays on a boundary.
            let (plain, rest) = text.split_at(at);
            self.0.write_str(plain)?;
            self.0.write_str("\\")?;
            self.0.write_str(&rest[..1])?;
            text = &rest[1..];
        }
        self.0.write_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::KeyPart;

    #[test]
    fn separators_and_escapes_are_escaped() {
        assert_eq!(KeyPart(&"x:y\\z").to_string(), "x\\:y\\\\z");
        assert_eq!(KeyPart(&42).to_string(), "42");
        assert_eq!(KeyPart("plain").to_string(), "plain");
    }
}
