//! Code generation for `#[redis_lock]`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Type, TypeParamBound};

use commerce_macro_support::options::missing;
use commerce_macro_support::{argument_names, template};

use crate::options::{OnLost, Options, ATTRIBUTE};

/// Type names that identify the lock client argument when `lock = ...` is not given.
const LOCK_TYPES: [&str; 2] = ["RedisLock", "LocalLock"];
const LOCK_TRAIT: &str = "DistributedLock";

fn is_lock_type(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => is_lock_type(&r.elem),
        Type::Paren(p) => is_lock_type(&p.elem),
        Type::Group(g) => is_lock_type(&g.elem),
        Type::ImplTrait(t) => has_lock_bound(t.bounds.iter()),
        Type::TraitObject(t) => has_lock_bound(t.bounds.iter()),
        Type::Path(p) => p.path.segments.last().is_some_and(|last| {
            if LOCK_TYPES.iter().any(|n| last.ident == n) {
                return true;
            }
            let is_wrapper = last.ident == "Arc" || last.ident == "Box";
            let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                return false;
            };
            is_wrapper
                && args
                    .args
                    .iter()
                    .any(|a| matches!(a, syn::GenericArgument::Type(t) if is_lock_type(t)))
        }),
        _ => false,
    }
}

fn has_lock_bound<'a>(mut bounds: impl Iterator<Item = &'a TypeParamBound>) -> bool {
    bounds.any(|b| {
        matches!(b, TypeParamBound::Trait(t) if t.path.segments.last().is_some_and(|s| s.ident == LOCK_TRAIT))
    })
}

/// The expression naming the lock client: the `lock` option or the one argument whose type
/// is a lock.
fn lock_client(function: &ItemFn, options: &Options) -> syn::Result<TokenStream> {
    if let Some(lock) = &options.lock {
        return Ok(quote!(#lock));
    }
    let candidates: Vec<&Ident> = function
        .sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(typed) if is_lock_type(&typed.ty) => match &*typed.pat {
                Pat::Ident(ident) => Some(&ident.ident),
                _ => None,
            },
            _ => None,
        })
        .collect();
    match candidates.as_slice() {
        [one] => Ok(quote!(#one)),
        [] => Err(syn::Error::new_spanned(
            &function.sig,
            "`#[redis_lock]` cannot find the lock client: add an argument of type `&RedisLock`, `&LocalLock`, `&impl DistributedLock` or `Arc<dyn DistributedLock>`, or name one with `lock = <expression>` (e.g. `lock = self.locks`)",
        )),
        [_, second, ..] => Err(syn::Error::new_spanned(
            second,
            "`#[redis_lock]` found several lock clients among the arguments; choose one with `lock = <argument>`",
        )),
    }
}

/// Expands the attribute on `function`.
pub(crate) fn expand(options: &Options, function: ItemFn) -> syn::Result<TokenStream> {
    if function.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            function.sig.fn_token,
            "`#[redis_lock]` can only be used on an `async fn`: the lock is awaited",
        ));
    }
    let ReturnType::Type(_, return_type) = function.sig.output.clone() else {
        return Err(syn::Error::new_spanned(
            &function.sig,
            "`#[redis_lock]` needs a function returning `Result<_, E>` with `E: From<commerce_lock::Error>`: lock failures are returned as errors",
        ));
    };
    let Some(key) = &options.key else {
        return Err(missing(
            ATTRIBUTE,
            "key = \"...\"",
            "key = \"stock:{product_id}\"",
        ));
    };
    let private = quote!(::commerce_lock::__private);
    let template = template::parse(key, &argument_names(&function.sig))?;
    let key_expr = template.key_expression(&quote!(#private::KeyPart));
    let client = lock_client(&function, options)?;

    let mut lock_options = quote!(<#private::LockOptions as ::core::default::Default>::default());
    if let Some(ms) = options.wait_ms {
        lock_options = quote!(#lock_options.with_wait(#private::Duration::from_millis(#ms)));
    }
    if let Some(ms) = options.lease_ms {
        lock_options = quote!(#lock_options.with_lease(#private::Duration::from_millis(#ms)));
    }
    if options.watchdog == Some(false) {
        lock_options = quote!(#lock_options.without_watchdog());
    }

    // Mixed-site hygiene: neither the body nor the arguments can see or clash with these
    // names (an argument called `key` stays the caller's).
    let key = Ident::new("__commerce_lock_key", Span::mixed_site());
    let guard = Ident::new("__commerce_lock_guard", Span::mixed_site());
    let body = Ident::new("__commerce_lock_body", Span::mixed_site());
    let output = Ident::new("__commerce_lock_output", Span::mixed_site());
    let error = Ident::new("__commerce_lock_error", Span::mixed_site());
    let fake = Ident::new("__commerce_lock_fake", Span::mixed_site());

    let guard_binding = options
        .guard
        .as_ref()
        .map(|name| quote!(let #name: &#private::LockGuard = &#guard;));
    let run = match options.on_lost.unwrap_or(OnLost::Cancel) {
        OnLost::Signal => quote!(let #output = #body.await;),
        OnLost::Cancel => quote! {
            let #output = match #private::run_until_lost(&#guard, #body).await {
                ::core::result::Result::Ok(#output) => #output,
                ::core::result::Result::Err(#error) => {
                    #private::release(#guard).await;
                    return ::core::result::Result::Err(::core::convert::From::from(#error));
                }
            };
        },
    };

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let statements = &block.stmts;
    let return_span = return_type.span();
    let fake_return = quote_spanned! {return_span=>
        #[allow(
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::needless_return
        )]
        if false {
            let #fake: #return_type = loop {};
            return #fake;
        }
    };
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            let #guard = {
                #[allow(unused_imports)]
                use #private::DistributedLock as _;
                let #key: ::std::string::String = #key_expr;
                match (#client).acquire(&#key, #lock_options).await {
                    ::core::result::Result::Ok(#guard) => #guard,
                    ::core::result::Result::Err(#error) => {
                        return ::core::result::Result::Err(::core::convert::From::from(#error));
                    }
                }
            };
            #guard_binding
            let #body = async move {
                #fake_return
                #(#statements)*
            };
            #run
            #private::release(#guard).await;
            #output
        }
    })
}
