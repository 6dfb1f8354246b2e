//! Code generation: the function keeps its signature; its body runs inside a call into
//! `::commerce_cache::__private`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{FnArg, ItemFn, Pat};

use crate::options::Options;
use crate::signature::{self, OkShape};
use crate::template;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Cached,
    Put,
    Evict,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Put => "cache_put",
            Self::Evict => "cache_evict",
        }
    }
}

pub(crate) fn expand(kind: Kind, args: TokenStream, item: &TokenStream) -> TokenStream {
    match try_expand(kind, args, item.clone()) {
        Ok(tokens) => tokens,
        // Keep the function so the only errors shown are the macro's, not "cannot find fn".
        Err(error) => {
            let error = error.to_compile_error();
            quote! { #error #item }
        }
    }
}

fn try_expand(kind: Kind, args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let function: ItemFn = syn::parse2(item)?;
    let options = Options::parse(kind, args)?;
    let (shape, output) = signature::check(kind, &function.sig)?;
    let template = template::parse(&options.key, &argument_names(&function))?;

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let cache = &options.cache;
    let format = &template.format;
    let key_args = &template.args;
    let key = quote! {
        let __commerce_cache_key: ::std::string::String = ::std::format!(#format, #(#key_args),*);
    };
    let ttl = match options.ttl {
        Some(millis) => quote! {
            ::core::option::Option::Some(::commerce_cache::__private::Duration::from_millis(#millis))
        },
        None => quote! { ::core::option::Option::None },
    };

    let body = match kind {
        Kind::Cached => {
            let read = match shape {
                OkShape::Optional => quote! { cached_option },
                OkShape::Plain => quote! { cached_value },
            };
            quote! {
                #key
                ::commerce_cache::__private::#read(
                    &(#cache),
                    &__commerce_cache_key,
                    #ttl,
                    move || async move {
                        let __commerce_cache_result: #output = #block;
                        __commerce_cache_result
                    },
                )
                .await
            }
        }
        Kind::Put | Kind::Evict => {
            let after = match (kind, shape) {
                (Kind::Put, OkShape::Optional) => {
                    quote! { put_option(&(#cache), &__commerce_cache_key, #ttl, &__commerce_cache_result) }
                }
                (Kind::Put, OkShape::Plain) => {
                    quote! { put_value(&(#cache), &__commerce_cache_key, #ttl, &__commerce_cache_result) }
                }
                _ => quote! { evict(&(#cache), &__commerce_cache_key, &__commerce_cache_result) },
            };
            // Not `async move`: the cache expression may borrow what the body borrows.
            quote! {
                #key
                let __commerce_cache_result: #output = async #block.await;
                ::commerce_cache::__private::#after.await;
                __commerce_cache_result
            }
        }
    };
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #body
        }
    })
}

/// Names a key template may start with: `self` and every argument bound to a plain name.
fn argument_names(function: &ItemFn) -> Vec<String> {
    function
        .sig
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
