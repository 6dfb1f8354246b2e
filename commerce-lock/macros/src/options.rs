//! The `#[redis_lock(...)]` options, parsed into a typed struct.

use commerce_macro_support::duration::{parse_millis, parse_positive_millis};
use commerce_macro_support::options::{set_once, unknown};
use syn::meta::ParseNestedMeta;
use syn::{Expr, Ident, LitBool, LitStr};

/// What to do when the lock is lost while the body runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnLost {
    /// Drop (cancel) the body and return `Err(commerce_lock::Error::LockLost { .. }.into())`.
    Cancel,
    /// Keep running; the body watches the guard's `lost()` signal itself.
    Signal,
}

/// Every option of the attribute.
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) key: Option<LitStr>,
    pub(crate) wait_ms: Option<u64>,
    pub(crate) lease_ms: Option<u64>,
    pub(crate) lock: Option<Expr>,
    pub(crate) guard: Option<Ident>,
    pub(crate) on_lost: Option<OnLost>,
    pub(crate) watchdog: Option<bool>,
}

pub(crate) const ATTRIBUTE: &str = "redis_lock";
const KNOWN: [&str; 7] = [
    "key", "wait", "lease", "lock", "guard", "on_lost", "watchdog",
];

impl Options {
    /// Parses one `name = value` option.
    pub(crate) fn parse_one(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let Some(name) = meta.path.get_ident().map(ToString::to_string) else {
            return Err(unknown(meta, ATTRIBUTE, &KNOWN));
        };
        match name.as_str() {
            "key" => {
                let key: LitStr = meta.value()?.parse()?;
                set_once(&mut self.key, key, meta)
            }
            "wait" => {
                let wait = parse_millis(&meta.value()?.parse()?, "wait")?;
                set_once(&mut self.wait_ms, wait, meta)
            }
            "lease" => {
                let lease = parse_positive_millis(&meta.value()?.parse()?, "lease")?;
                set_once(&mut self.lease_ms, lease, meta)
            }
            "lock" => {
                let lock: Expr = meta.value()?.parse()?;
                set_once(&mut self.lock, lock, meta)
            }
            "guard" => {
                let guard: Ident = meta.value()?.parse()?;
                set_once(&mut self.guard, guard, meta)
            }
            "on_lost" => {
                let text: LitStr = meta.value()?.parse()?;
                let on_lost = match text.value().as_str() {
                    "cancel" => OnLost::Cancel,
                    "signal" => OnLost::Signal,
                    _ => {
                        return Err(syn::Error::new_spanned(
                            &text,
                            "on_lost must be \"cancel\" (drop the body, return an error) or \"signal\" (only fire the guard's lost signal)",
                        ))
                    }
                };
                set_once(&mut self.on_lost, on_lost, meta)
            }
            "watchdog" => {
                let on: LitBool = meta.value()?.parse()?;
                set_once(&mut self.watchdog, on.value, meta)
            }
            _ => Err(unknown(meta, ATTRIBUTE, &KNOWN)),
        }
    }
}
