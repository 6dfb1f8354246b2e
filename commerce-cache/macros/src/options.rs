//! The attribute's arguments: `cache = EXPR, key = "...", ttl = "..."`.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::{Expr, LitStr};

use crate::expand::Kind;

pub(crate) struct Options {
    pub(crate) cache: Expr,
    pub(crate) key: LitStr,
    /// Milliseconds.
    pub(crate) ttl: Option<u64>,
}

impl Options {
    pub(crate) fn parse(kind: Kind, args: TokenStream) -> syn::Result<Self> {
        let mut cache = None;
        let mut key = None;
        let mut ttl = None;
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("cache") {
                cache = Some(meta.value()?.parse::<Expr>()?);
            } else if meta.path.is_ident("key") {
                key = Some(meta.value()?.parse::<LitStr>()?);
            } else if meta.path.is_ident("ttl") && kind != Kind::Evict {
                let lit = meta.value()?.parse::<LitStr>()?;
                ttl = Some(crate::duration::parse_millis(&lit)?);
            } else {
                let expected = if kind == Kind::Evict {
                    "`cache` and `key`"
                } else {
                    "`cache`, `key` and `ttl`"
                };
                return Err(meta.error(format!(
                    "unknown argument for `#[{}]`: expected {expected}",
                    kind.name()
                )));
            }
            Ok(())
        });
        parser.parse2(args)?;
        let cache = cache.ok_or_else(|| {
            syn::Error::new(
                Span::call_site(),
                format!(
                    "`#[{}]` needs `cache = <expression>`: the TwoLevelCache to use, e.g. `cache = self.products`",
                    kind.name()
                ),
            )
        })?;
        let key = key.ok_or_else(|| {
            syn::Error::new(
                Span::call_site(),
                format!(
                    "`#[{}]` needs `key = \"...\"`: a template over the arguments, e.g. `key = \"product:{{id}}\"`",
                    kind.name()
                ),
            )
        })?;
        Ok(Self { cache, key, ttl })
    }
}
