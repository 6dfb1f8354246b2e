//! The names a key template may start with.

use syn::{FnArg, Pat, Signature};

/// `self` (for methods) and every argument bound to a plain name, in order. Arguments bound
/// by a pattern (`(a, b): (u32, u32)`) have no single name and are left out.
#[must_use]
pub fn argument_names(signature: &Signature) -> Vec<String> {
    signature
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Receiver(_) => Some("self".to_owned()),
            FnArg::Typed(typed) => match typed.pat.as_ref() {
                Pat::Ident(ident) => Some(ident.ident.to_string()),
                _ => None,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::argument_names;

    #[test]
    fn plain_names_and_self_in_order() {
        let signature: syn::Signature =
            syn::parse_quote!(async fn f(&self, id: i64, mut q: Query, (a, b): (u8, u8)));
        assert_eq!(argument_names(&signature), ["self", "id", "q"]);
    }
}
