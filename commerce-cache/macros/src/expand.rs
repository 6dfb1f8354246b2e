//! Code generation: the function keeps its signature; its body runs inside a call into
//! `::commerce_cache::__private`.

use commerce_macro_support::{argument_names, template};
use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Ident, ItemFn};

use crate::options::Options;
use crate::signature::{self, OkShape};

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
    let template = template::parse(&options.key, &argument_names(&function.sig))?;

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let private = quote!(::commerce_cache::__private);
    let cache = &options.cache;
    // Mixed-site hygiene: neither the body nor the arguments can see or clash with these.
    let key = Ident::new("__commerce_cache_key", Span::mixed_site());
    let result = Ident::new("__commerce_cache_result", Span::mixed_site());
    let key_expression = template.key_expression(&quote!(#private::KeyPart));
    let ttl = match options.ttl {
        Some(millis) => quote! {
            ::core::option::Option::Some(#private::Duration::from_millis(#millis))
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
                let #key: ::std::string::String = #key_expression;
                #private::#read(
                    &(#cache),
                    &#key,
                    #ttl,
                    move || async move {
                        let #result: #output = #block;
                        #result
                    },
                )
                .await
            }
        }
        Kind::Put | Kind::Evict => {
            let after = match (kind, shape) {
                (Kind::Put, OkShape::Optional) => {
                    quote! { put_option(&(#cache), #key, #ttl, &#result) }
                }
                (Kind::Put, OkShape::Plain) => {
                    quote! { put_value(&(#cache), #key, #ttl, &#result) }
                }
                _ => quote! { evict(&(#cache), #key, &#result) },
            };
            // Not `async move`: the cache expression may borrow what the body borrows.
            // `#after` starts the cache work in a task of its own as soon as the body returns
            // (no await in between), so dropping this future afterwards cannot stop it.
            quote! {
                let #key: ::std::string::String = #key_expression;
                let #result: #output = async #block.await;
                #private::#after.await;
                #result
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
