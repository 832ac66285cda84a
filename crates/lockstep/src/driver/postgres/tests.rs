//! Tests of the PostgreSQL driver's SQL text.

use super::literal;

#[test]
fn literals_escape_quotes_and_backslashes() {
    assert_eq!(literal("plain"), "E'plain'");
    assert_eq!(literal("it's"), "E'it''s'");
    assert_eq!(
        literal("a\\'; DROP TABLE x; --"),
        "E'a\\\\''; DROP TABLE x; --'"
    );
}
