//! Misuse of `#[redis_lock]` is a compile error with a clear message.

#[test]
fn misuse_is_rejected_at_compile_time() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
