//! The `#[redis_lock]` attribute macro; use it through the `commerce-lock` crate, which
//! re-exports it with its documentation.
#![warn(missing_docs)]

mod duration;
mod expand;
mod options;
mod template;

use proc_macro::TokenStream;
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
/// Options:
/// - `key = "..."` (required): a template; `{arg}` and `{arg.field.0}` insert an argument's
///   (or `self`'s) `Display`; `{{`/`}}` are literal braces.
/// - `wait = "2s"`, `lease = "10s"`: durations in `ms`, `s`, `m` or `h` (defaults: those of
///   `LockOptions::default()`).
/// - `lock = <expr>`: the lock client (anything whose methods reach a `DistributedLock`, e.g.
///   `self.locks`). Without it, the one argument typed `&RedisLock`, `&LocalLock`,
///   `&impl DistributedLock`, `&dyn DistributedLock` or an `Arc`/`Box` of those is used.
/// - `guard = name`: binds `name: &LockGuard` for the body (fencing token, lost signal).
/// - `on_lost = "cancel"` (default): if the lock is lost mid-body, the body is dropped and
///   the function returns `Err(commerce_lock::Error::LockLost { .. }.into())`;
///   `on_lost = "signal"` lets the body run on and watch `guard.lost()` itself.
/// - `watchdog = false`: no renewal; the lock expires after `lease`.
///
/// The function must return `Result<_, E>` with `E: From<commerce_lock::Error>`: acquire
/// failures (`WaitTimeout`, `Unavailable`) are returned through it.
#[proc_macro_attribute]
pub fn redis_lock(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = options::Options::default();
    let parser = syn::meta::parser(|meta| options.parse_one(&meta));
    if let Err(error) = syn::parse::Parser::parse(parser, attr) {
        return error.to_compile_error().into();
    }
    let function = match syn::parse::<ItemFn>(item) {
        Ok(function) => function,
        Err(error) => return error.to_compile_error().into(),
    };
    expand::expand(&options, function)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
