//! The grammar shared by `#[redis_lock]` (commerce-lock-macros) and `#[cached]`,
//! `#[cache_put]`, `#[cache_evict]` (commerce-cache-macros): key templates, durations, the
//! argument names a template may use, and the option-list rules.
//!
//! **Not a public API.** It exists so that the two macro crates cannot drift apart again
//! (see `docs/decisions/0007-one-macro-grammar.md`); names and signatures may change in any
//! release. Every check returns a [`syn::Error`] spanned at the offending literal or token.
//!
//! The grammar, in short:
//! - a key template is a non-empty string; `{arg}`, `{arg.field}`, `{arg.0}` and `{self.field}`
//!   insert a value with `Display`; `{{` and `}}` are literal braces; a template without a
//!   placeholder is a constant key;
//! - two placeholders must be separated by literal text containing `:`, and the generated code
//!   escapes each value (`\` as `\\`, `:` as `\:`), so distinct values always give distinct
//!   keys;
//! - durations are a whole number followed by `ms`, `s`, `m` or `h`;
//! - an option given twice, or one the attribute does not know, is an error.
//!
//! The escaping itself, [`KeyPart`], runs in the generated code: the runtime crates re-export
//! it from their `__private` modules and depend on this crate without its `grammar` feature,
//! so the rule exists once and they do not compile `syn`.

#[cfg(feature = "grammar")]
pub mod arguments;
#[cfg(feature = "grammar")]
pub mod duration;
mod key_part;
#[cfg(feature = "grammar")]
pub mod options;
#[cfg(feature = "grammar")]
pub mod template;

pub use crate::key_part::KeyPart;

#[cfg(feature = "grammar")]
pub use crate::arguments::argument_names;
