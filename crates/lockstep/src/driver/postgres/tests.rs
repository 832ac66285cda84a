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

#[test]
fn the_migration_in_a_query_comes_after_the_fence_and_its_bounds() {
    use super::run::migration_sql;
    let query = "BEGIN;\n RESET ALL;\n WITH fence AS (UPDATE l SET x = 1 RETURNING 1)\n \
                 SELECT CAST(CASE WHEN count(*) = 1 THEN '1' ELSE 'lost' END AS integer) FROM fence;\n \
                 SET LOCAL lock_timeout = 5000;\nSET LOCAL statement_timeout = 60000;\n\
                 ALTER TABLE t ADD COLUMN c int;\nINSERT INTO h VALUES (1);";
    assert!(migration_sql(query).starts_with("ALTER TABLE t ADD COLUMN c int;"));
    // A migration's own `SET LOCAL` of another setting is its SQL.
    let own = "SELECT 1 FROM fence;\nSET LOCAL search_path = x;\nSELECT 2;";
    assert!(migration_sql(own).starts_with("SET LOCAL search_path"));
    // No fence (no lock): the query as it is.
    assert_eq!(migration_sql("BEGIN;\nSELECT 1;"), "BEGIN;\nSELECT 1;");
}
