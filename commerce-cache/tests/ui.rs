//! Misuse of the attribute macros is a compile error with a clear message.

#[test]
fn misuse_is_rejected_at_compile_time() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
