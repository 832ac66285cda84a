//! The statement splitter: statements come in order, inside the input, on
//! character boundaries, and never overlap; positions map to lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::fuzzing::{self as sql, Dialect};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for dialect in [Dialect::Postgres, Dialect::Sqlite, Dialect::Mysql] {
        let checked = sql::check_terminated(text, dialect);
        match sql::split(text, dialect) {
            Ok(statements) => {
                assert!(checked.is_ok());
                let mut end = 0;
                for s in &statements {
                    assert!(s.range.start >= end && s.range.start < s.range.end);
                    assert!(s.range.end <= text.len());
                    assert!(text.is_char_boundary(s.range.start) && text.is_char_boundary(s.range.end));
                    end = s.range.end;
                    let _ = s.is_transaction_control();
                }
            }
            Err(e) => {
                assert!(checked.is_err());
                assert!(e.offset <= text.len());
                let _ = sql::line_col(text, e.offset);
            }
        }
    }
    let _ = sql::has_code(text);
    if let Some(at) = sql::first_code_offset(text) {
        let _ = sql::line_col(text, at);
    }
});
