//! `lockstep.toml`: any text is parsed or refused with a message naming
//! the file; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = lockstep_cli::settings::parse_config(text, std::path::Path::new("lockstep.toml")) {
        assert!(e.message.contains("lockstep.toml") || e.message.contains("invalid database URL"));
    }
});
