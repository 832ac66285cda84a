//! A migration file's name and bytes: parsed, then checked for both
//! engines as `upgrade` would. Never a panic; an error names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::fuzzing::{check_section, parse_migration, Dialect};

fuzz_target!(|data: &[u8]| {
    // The name comes first, up to a NUL; a valid name half the time.
    let (name, content) = match data.iter().position(|&b| b == 0) {
        Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
        None => ("1_fuzz.sql".to_string(), data),
    };
    match parse_migration(&name, content) {
        Ok(m) => {
            // A NUL would end the SQL early on SQLite: never accepted.
            assert!(!m.up.sql.contains('\0'));
            assert!(m.down.as_ref().is_none_or(|d| !d.sql.contains('\0')));
            let text = m.checksum.to_string();
            assert!(text.starts_with("sha256:"));
            assert_eq!(lockstep::Checksum::parse(&text), m.checksum);
            for dialect in [Dialect::Postgres, Dialect::Sqlite, Dialect::Mysql] {
                let _ = check_section(&m.up, dialect);
                if let Some(down) = &m.down {
                    let _ = check_section(down, dialect);
                }
            }
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
});
