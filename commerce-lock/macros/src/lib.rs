//! The `#[redis_lock]` attribute macro; use it through the `commerce-lock` crate, which
//! re-exports it with its documentation.
//!
//! Its grammar (key templates, durations, option rules) is shared with the commerce-cache
//! macros through `commerce-macro-support`.

mod expand;
mod options;

use proc_macro::TokenStream;
use quote::quote;
use syn::parse::Parser;
use syn::ItemFn;

/// Runs the body of an `async fn` while holding a lock whose key is built from the
/// function's arguments.
///
/// ```ignore
/// #[redis_lock(key = "stock:{product_id}", wait = "2s", lease = "10s")]
/// async fn reserve(lock: &RedisLock, product_id: i64, quantity: u32) -> Result<(), AppError> {
///     // runs with `stock:<product_id>` held; released on every exit path
/// }
/// ```
///
/// Options (each at most once):
/// - `key = "..."` (required): a template; `{arg}` and `{arg.field.0}` insert an argument's
///   (or `self`'s) `Display`, escaped (`\` as `\\`, `:` as `\:`) so that different arguments
///   never share a key; two placeholders need a `:` between them; `{{`/`}}` are literal
///   braces. A template without placeholders is one constant key (a singleton job).
/// - `wait = "2s"`, `lease = "10s"`: durations in `ms`, `s`, `m` or `h` (defaults: those of
///   `LockOptions::default()`).
/// - `lock = <expr>`: the lock client (anything whose methods reach a `DistributedLock`, e.g.
///   `self.locks`). Without it, the one argument typed `&RedisLock`, `&LocalLock`,
///   `&impl DistributedLock`, `&dyn DistributedLock` or an `Arc`/`Box` of those is used.
/// - `guard = name`: binds `name: &LockGuard` for the body (fencing token, lost signal).
/// - `on_lost = "cancel"` (default): if the lock is lost mid-body, the body is dropped and
///   the function returns `Err(commerce_lock::Error::LockLost { .. }.into())`;
///   `on_lost = "signal"` lets the body run on and watch `guard.lost()` itself.
/// - `watchdog = false`: no renewal; the lock expires after `lease`, and with the default
///   `on_lost = "cancel"` the body is cancelled at about 90 % of the lease (before another
///   holder can get the key).
///
/// The function must return `Result<_, E>` with `E: From<commerce_lock::Error>`: acquire
/// failures (`WaitTimeout`, `Unavailable`) are returned through it.
#[proc_macro_attribute]
pub fn redis_lock(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match try_expand(attr.into(), item.clone()) {
        Ok(expanded) => expanded.into(),
        // Keep the function, so the only error shown is the macro's, not "cannot find fn".
        Err(error) => {
            let error = error.to_compile_error();
            quote!(#error #item).into()
        }
    }
}

fn try_expand(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let mut options = options::Options::default();
    syn::meta::parser(|meta| options.parse_one(&meta)).parse2(attr)?;
    let function: ItemFn = syn::parse2(item)?;
    expand::expand(&options, function)
}
