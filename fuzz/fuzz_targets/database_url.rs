//! Database URLs: parsed or refused, never a panic; what a parsed URL
//! displays (and its Debug) does not depend on its password, and an error
//! that echoes the URL shows no password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::url::{DatabaseUrl, Secret};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<DatabaseUrl>() {
        Ok(url) => {
            if let DatabaseUrl::Postgres(target) = &url {
                // Typed where another argument belongs, the URL is echoed
                // by an error: the redaction of errors hides its password.
                if let Some(password) = target.password.as_ref().map(|p| p.expose()) {
                    // (A password of `*`s could be the mask itself.)
                    if password.len() >= 4 && !password.contains('*') && text.matches(password).count() == 1 {
                        assert!(!lockstep_cli::redact::urls(text).contains(password));
                    }
                }
                let mut other = target.clone();
                other.password = target.password.as_ref().map(|_| Secret::new("another password"));
                let other = DatabaseUrl::Postgres(other);
                assert_eq!(url.to_string(), other.to_string());
                assert_eq!(format!("{url:?}"), format!("{other:?}"));
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
