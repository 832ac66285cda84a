//! Database URLs: parsed or refused, never a panic; what a parsed URL
//! displays (and its Debug) does not depend on its password, and an error
//! that echoes the URL shows no password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::DatabaseUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<DatabaseUrl>() {
        Ok(url) => {
            // Typed where another argument belongs, the URL is echoed by an
            // error: the redaction of errors hides its password.
            if let Some(password) = url.password() {
                // (A password of `*`s could be the mask itself.)
                if password.len() >= 4 && !password.contains('*') && text.matches(password).count() == 1 {
                    assert!(!lockstep_cli::redact::urls(text).contains(password));
                }
            }
            if let Some(other) = lockstep::fuzzing::with_password(&url, "another password") {
                assert_eq!(url.to_string(), other.to_string());
                assert_eq!(format!("{url:?}"), format!("{other:?}"));
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
