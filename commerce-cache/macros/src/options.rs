//! The attribute's options: `cache = EXPR, key = "...", ttl = "..."`, each at most once.

use commerce_macro_support::duration::parse_positive_millis;
use commerce_macro_support::options::{missing, set_once, unknown};
use proc_macro2::TokenStream;
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
        // An evict removes the key: a TTL would mean nothing there.
        let known: &[&str] = if kind == Kind::Evict {
            &["cache", "key"]
        } else {
            &["cache", "key", "ttl"]
        };
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("cache") {
                set_once(&mut cache, meta.value()?.parse::<Expr>()?, &meta)
            } else if meta.path.is_ident("key") {
                set_once(&mut key, meta.value()?.parse::<LitStr>()?, &meta)
            } else if meta.path.is_ident("ttl") && kind != Kind::Evict {
                let millis = parse_positive_millis(&meta.value()?.parse()?, "ttl")?;
                set_once(&mut ttl, millis, &meta)
            } else {
                Err(unknown(&meta, kind.name(), known))
            }
        });
        parser.parse2(args)?;
        let cache = cache
            .ok_or_else(|| missing(kind.name(), "cache = <expression>", "cache = self.products"))?;
        let key =
            key.ok_or_else(|| missing(kind.name(), "key = \"...\"", "key = \"product:{id}\""))?;
        Ok(Self { cache, key, ttl })
    }
}
