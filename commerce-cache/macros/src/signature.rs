//! What the annotated function must look like: `async fn ... -> Result<T, E>` or
//! `-> Result<Option<T>, E>`.

use syn::{GenericArgument, PathArguments, ReturnType, Signature, Type};

use crate::expand::Kind;

/// How the function's `Ok` value maps to the cache.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OkShape {
    /// `Result<Option<T>, E>`: `None` is a cacheable "not found".
    Optional,
    /// `Result<T, E>`.
    Plain,
}

/// The function's shape and its return type.
pub(crate) fn check(kind: Kind, sig: &Signature) -> syn::Result<(OkShape, Type)> {
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            format!("`#[{}]` can only be used on an `async fn`", kind.name()),
        ));
    }
    let not_result = |span: &dyn quote::ToTokens| {
        syn::Error::new_spanned(
            span,
            format!(
                "`#[{}]` needs a function returning `Result<T, E>` or `Result<Option<T>, E>` (errors are never cached)",
                kind.name()
            ),
        )
    };
    let ReturnType::Type(_, ty) = &sig.output else {
        return Err(not_result(sig));
    };
    let ok = result_ok_type(ty).ok_or_else(|| not_result(ty))?;
    let shape = if last_segment_is(ok, "Option") {
        OkShape::Optional
    } else {
        OkShape::Plain
    };
    Ok((shape, ty.as_ref().clone()))
}

/// `T` of a type spelled `...::Result<T, ...>`.
fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(ok) => Some(ok),
        _ => None,
    }
}

fn last_segment_is(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none()
        && path.path.segments.last().is_some_and(|last| last.ident == name
            && matches!(last.arguments, PathArguments::AngleBracketed(_))))
}
