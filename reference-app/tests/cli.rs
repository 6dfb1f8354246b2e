//! The `reference-app` binary's commands that need no running system.

use std::process::Command;

const SECRET: &str = "cli-test-secret-0123456789abcdef-0123456789";

fn token(args: &[&str], secret: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_reference-app"))
        .args(["token", "--sub", "alice"])
        .args(args)
        .env("COMMERCE_JWT_SECRET", secret)
        .env_remove("TOKEN_MAX_LIFETIME_HOURS")
        .output()
        .expect("the binary runs")
}

/// Review minor 5: `token` checks the secret like the server does and caps the lifetime.
#[test]
fn token_refuses_a_short_secret_and_an_endless_lifetime() {
    let ok = token(&["--hours", "24"], SECRET);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).matches('.').count(), 2);

    for (args, secret, says) in [
        (
            &["--hours", "1000000"][..],
            SECRET,
            "TOKEN_MAX_LIFETIME_HOURS",
        ),
        (&["--hours", "0"][..], SECRET, "--hours 0"),
        (&[][..], "sixteen-bytes-ok", "at least 32 bytes"),
    ] {
        let refused = token(args, secret);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{args:?}: {refused:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains(secret), "the secret leaked: {stderr}");
    }
}
