//! A small SQL lexer: enough to find statement boundaries, comments and
//! quoted text, never enough to parse SQL.
//!
//! It serves three purposes:
//! - split a `-- lockstep:no-transaction` section into statements, because
//!   PostgreSQL runs a multi-statement query string in one implicit
//!   transaction and `CREATE INDEX CONCURRENTLY` refuses that;
//! - refuse a section that would end inside a string, quoted identifier,
//!   comment or dollar quote, because lockstep appends its own history
//!   statements after the section and those must never be swallowed;
//! - find top-level transaction control (`COMMIT`, `BEGIN`, ...) in a section
//!   that lockstep wraps in a transaction: it would commit the migration
//!   without its history row.
//!
//! The rules follow PostgreSQL's `psql` (nested block comments, `E''`
//! strings, dollar quotes, the `BEGIN ATOMIC ... END` heuristic for SQL
//! function bodies), SQLite (`[...]` and backtick identifiers,
//! `CREATE TRIGGER ... BEGIN ... END`) and MariaDB/MySQL (backslash
//! escapes, `#` comments, compound statements in routines, triggers and
//! events, whose `END IF`, `END LOOP`, `END WHILE` and `END REPEAT` close
//! no `BEGIN`, and executable comments: the server runs the text of
//! `/*! ... */`, `/*!50001 ... */` and MariaDB's `/*M! ... */` as SQL, and
//! `mysqldump` writes views, triggers and settings inside them).

use std::ops::Range;

/// Which SQL dialect's lexical rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL, as `psql` splits it.
    Postgres,
    /// SQLite.
    Sqlite,
    /// MariaDB and MySQL under the server's default SQL mode: backslash
    /// escapes in strings, `"` for strings, `#` comments, and `--` a comment
    /// only before whitespace.
    Mysql,
}

/// One statement found by [`split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Byte range in the input, from the first token to the terminating `;`
    /// (inclusive) or the end of the input.
    pub range: Range<usize>,
    /// The statement's first two words, upper-cased (empty when absent).
    pub keywords: [String; 2],
}

impl Statement {
    /// Whether this statement starts, ends or aborts a transaction: such a
    /// statement inside a migration that lockstep runs in a transaction would
    /// separate the migration from its history row.
    pub fn is_transaction_control(&self) -> bool {
        let [first, second] = &self.keywords;
        match first.as_str() {
            "BEGIN" | "COMMIT" | "END" | "ABORT" => true,
            "START" => second == "TRANSACTION",
            // `ROLLBACK TO [SAVEPOINT] x` stays inside the transaction.
            "ROLLBACK" => second != "TO",
            _ => false,
        }
    }
}

impl Statement {
    /// Whether this statement commits the transaction it runs in, by
    /// itself: on MariaDB/MySQL, DDL and account and lock statements (not
    /// `CREATE TEMPORARY TABLE` nor `DROP TEMPORARY TABLE`); on PostgreSQL
    /// and SQLite, whose DDL is transactional, only transaction control.
    pub fn commits_implicitly(&self, dialect: Dialect) -> bool {
        if dialect != Dialect::Mysql {
            return self.is_transaction_control();
        }
        let [first, second] = &self.keywords;
        match first.as_str() {
            "CREATE" | "DROP" => second != "TEMPORARY",
            "ALTER" | "RENAME" | "TRUNCATE" | "GRANT" | "REVOKE" | "LOCK" | "UNLOCK"
            | "ANALYZE" | "OPTIMIZE" | "REPAIR" | "INSTALL" | "UNINSTALL" | "FLUSH" => true,
            _ => self.is_transaction_control(),
        }
    }
}

/// A construct that runs to the end of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    /// Byte offset where the unterminated construct starts.
    pub offset: usize,
    /// What is unterminated, e.g. "string literal".
    pub what: &'static str,
}

/// Splits `sql` into statements. Pieces holding only whitespace and comments
/// are dropped.
pub fn split(sql: &str, dialect: Dialect) -> Result<Vec<Statement>, LexError> {
    let mut lexer = Lexer::new(sql, dialect);
    let mut out = Vec::new();
    let mut current = StatementState::default();
    while let Some(token) = lexer.next_token()? {
        match token {
            Token::Comment => {}
            Token::Semicolon(at) => {
                if current.depth_is_zero() {
                    if let Some(start) = current.start {
                        out.push(Statement {
                            range: start..at + 1,
                            keywords: current.keywords.clone(),
                        });
                    }
                    current = StatementState::default();
                } else {
                    current.start.get_or_insert(at);
                }
            }
            Token::Word(range) => {
                current.start.get_or_insert(range.start);
                current.word(&sql[range], dialect);
            }
            Token::Open(at) => {
                current.start.get_or_insert(at);
                current.paren_depth += 1;
            }
            Token::Close(at) => {
                current.start.get_or_insert(at);
                current.paren_depth = current.paren_depth.saturating_sub(1);
            }
            Token::Other(at) => {
                current.start.get_or_insert(at);
                current.words_seen += 1;
            }
            Token::Edge(at) => {
                current.start.get_or_insert(at);
            }
        }
    }
    if let Some(start) = current.start {
        let end = sql
            .bytes()
            .rposition(|b| !is_space(b))
            .map_or(start, |last| last + 1);
        out.push(Statement {
            range: start..end,
            keywords: current.keywords,
        });
    }
    Ok(out)
}

/// Checks that `sql` does not end inside a string, quoted identifier, comment
/// or dollar quote.
pub fn check_terminated(sql: &str, dialect: Dialect) -> Result<(), LexError> {
    let mut lexer = Lexer::new(sql, dialect);
    while lexer.next_token()?.is_some() {}
    Ok(())
}

/// Where the placeholders (`?`) of a MariaDB/MySQL statement are: outside
/// literals, quoted names and comments. An unterminated one ends the search.
pub(crate) fn placeholders(sql: &str) -> Vec<usize> {
    let mut lexer = Lexer::new(sql, Dialect::Mysql);
    let mut found = Vec::new();
    while let Ok(Some(token)) = lexer.next_token() {
        if let Token::Other(at) = token {
            if sql.as_bytes()[at] == b'?' {
                found.push(at);
            }
        }
    }
    found
}

/// Whether `sql` holds anything but whitespace, comments and empty
/// statements.
pub fn has_code(sql: &str) -> bool {
    first_code_offset(sql).is_some()
}

/// The byte offset of the first token that is neither a comment nor an empty
/// statement. Lexing errors count as code: the database will report them.
pub fn first_code_offset(sql: &str) -> Option<usize> {
    let mut lexer = Lexer::new(sql, Dialect::Postgres);
    loop {
        let before = lexer.pos;
        match lexer.next_token() {
            Ok(Some(Token::Comment | Token::Semicolon(_))) => continue,
            Ok(None) => return None,
            Ok(Some(Token::Word(r))) => return Some(r.start),
            Ok(Some(Token::Open(at) | Token::Close(at) | Token::Other(at) | Token::Edge(at))) => {
                return Some(at)
            }
            Err(e) => return Some(e.offset.max(before)),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let col = match before.rfind('\n') {
        Some(nl) => before[nl + 1..].chars().count() + 1,
        None => before.chars().count() + 1,
    };
    (line, col)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[derive(Default)]
struct StatementState {
    start: Option<usize>,
    keywords: [String; 2],
    words_seen: usize,
    /// Whether the statement opened as `CREATE [OR REPLACE] FUNCTION|PROCEDURE`
    /// (PostgreSQL) or `CREATE [TEMP] TRIGGER` (SQLite): only there can a
    /// `BEGIN ... END` block hold semicolons.
    block_body: Option<bool>,
    paren_depth: usize,
    begin_depth: usize,
    /// The word before was a block's `END` (MariaDB/MySQL: the next word
    /// may say it closed an `IF`, a loop or a `CASE` instead).
    after_end: bool,
}

impl StatementState {
    fn depth_is_zero(&self) -> bool {
        self.paren_depth == 0 && self.begin_depth == 0
    }

    fn word(&mut self, word: &str, dialect: Dialect) {
        let upper = word.to_ascii_uppercase();
        if self.words_seen < 2 {
            self.keywords[self.words_seen] = upper.clone();
        }
        self.words_seen += 1;
        if self.block_body.is_none() {
            self.block_body = self.classify(&upper, dialect);
        }
        if self.block_body != Some(true) || self.paren_depth > 0 {
            return;
        }
        if std::mem::take(&mut self.after_end) && dialect == Dialect::Mysql {
            match upper.as_str() {
                // `END IF` and the loops' ends close what was never counted.
                "IF" | "LOOP" | "WHILE" | "REPEAT" => {
                    self.begin_depth += 1;
                    return;
                }
                // `END CASE` closes the `CASE` that was counted.
                "CASE" => return,
                _ => {}
            }
        }
        match upper.as_str() {
            "BEGIN" => self.begin_depth += 1,
            // CASE ... END nests inside a block; outside one it cannot hold a `;`.
            "CASE" if self.begin_depth > 0 => self.begin_depth += 1,
            "END" => {
                self.begin_depth = self.begin_depth.saturating_sub(1);
                self.after_end = true;
            }
            _ => {}
        }
    }

    /// Decides, word by word, whether the statement can hold a block body:
    /// `Some(true)` or `Some(false)` once known, `None` while undecided.
    fn classify(&self, upper: &str, dialect: Dialect) -> Option<bool> {
        let first = self.keywords[0].as_str();
        if first != "CREATE" {
            return Some(false);
        }
        if self.words_seen == 1 {
            return None;
        }
        match (dialect, upper) {
            (Dialect::Postgres, "FUNCTION" | "PROCEDURE") => Some(true),
            (Dialect::Postgres, "OR" | "REPLACE") => None,
            (Dialect::Sqlite, "TRIGGER") => Some(true),
            (Dialect::Sqlite, "TEMP" | "TEMPORARY") => None,
            (Dialect::Mysql, "PROCEDURE" | "FUNCTION" | "TRIGGER" | "EVENT") => Some(true),
            // `CREATE [OR REPLACE] [DEFINER = user] [AGGREGATE] ...`: the
            // user's name is one to three words.
            (Dialect::Mysql, _) if self.words_seen <= 8 && !is_object_kind(upper) => None,
            _ => Some(false),
        }
    }
}

/// What a MariaDB/MySQL `CREATE` makes that cannot hold a compound
/// statement.
fn is_object_kind(word: &str) -> bool {
    matches!(
        word,
        "TABLE"
            | "INDEX"
            | "UNIQUE"
            | "FULLTEXT"
            | "SPATIAL"
            | "VIEW"
            | "DATABASE"
            | "SCHEMA"
            | "USER"
            | "ROLE"
            | "SEQUENCE"
            | "SERVER"
            | "TABLESPACE"
            | "TEMPORARY"
    )
}

enum Token {
    Comment,
    Semicolon(usize),
    Word(Range<usize>),
    Open(usize),
    Close(usize),
    /// Anything else that is code: literals, operators, numbers.
    Other(usize),
    /// The opening or closing of an executable comment (MariaDB/MySQL):
    /// part of the statement's text, not one of its words.
    Edge(usize),
}

struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    dialect: Dialect,
    /// Where the executable comment the lexer is inside opened.
    executable: Option<usize>,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str, dialect: Dialect) -> Self {
        Lexer {
            src: sql.as_bytes(),
            pos: 0,
            dialect,
            executable: None,
        }
    }

    /// Steps over the opening of an executable comment (`/*!`, `/*M!`,
    /// and the server version that may follow), or its closing `*/`, if
    /// one is here.
    fn executable_edge(&mut self) -> bool {
        let rest = &self.src[self.pos..];
        if self.executable.is_some() {
            if !rest.starts_with(b"*/") {
                return false;
            }
            self.pos += 2;
            self.executable = None;
        } else {
            let opener = if rest.starts_with(b"/*!") {
                3
            } else if rest.starts_with(b"/*M!") {
                4
            } else {
                return false;
            };
            self.executable = Some(self.pos);
            self.pos += opener;
            while self.peek(0).is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1;
            }
        }
        true
    }
}

/// SQL whitespace: ASCII space, tab, line feed, vertical tab, form feed,
/// carriage return (what PostgreSQL and SQLite skip between tokens).
fn is_space(b: u8) -> bool {
    b.is_ascii_whitespace() || b == 0x0b
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_char(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.src.get(self.pos + ahead).copied()
    }

    /// The next token. One match over what can start a token: long, but a
    /// lexer's cases read best side by side.
    fn next_token(&mut self) -> Result<Option<Token>, LexError> {
        while let Some(b) = self.peek(0) {
            if is_space(b) {
                self.pos += 1;
            } else {
                break;
            }
        }
        let start = self.pos;
        let Some(b) = self.peek(0) else {
            return match self.executable {
                Some(offset) => Err(LexError {
                    offset,
                    what: "executable comment",
                }),
                None => Ok(None),
            };
        };
        if self.dialect == Dialect::Mysql && self.executable_edge() {
            return Ok(Some(Token::Edge(start)));
        }
        let token = match b {
            // `--` starts a comment on MariaDB/MySQL only before whitespace
            // (`1--1` is arithmetic); `#` always does there.
            b'-' if self.peek(1) == Some(b'-')
                && (self.dialect != Dialect::Mysql || self.peek(2).is_none_or(|c| c <= b' ')) =>
            {
                self.line_comment();
                Token::Comment
            }
            b'#' if self.dialect == Dialect::Mysql => {
                self.line_comment();
                Token::Comment
            }
            b'/' if self.peek(1) == Some(b'*') => {
                self.block_comment(start)?;
                Token::Comment
            }
            b'\'' => {
                self.pos += 1;
                let backslash = self.dialect == Dialect::Mysql;
                self.quoted(start, b'\'', backslash, "string literal")?;
                Token::Other(start)
            }
            b'"' if self.dialect == Dialect::Mysql => {
                self.pos += 1;
                self.quoted(start, b'"', true, "string literal")?;
                Token::Other(start)
            }
            b'"' => {
                self.pos += 1;
                self.quoted(start, b'"', false, "quoted identifier")?;
                Token::Other(start)
            }
            b'`' if self.dialect != Dialect::Postgres => {
                self.pos += 1;
                self.quoted(start, b'`', false, "quoted identifier")?;
                Token::Other(start)
            }
            b'[' if self.dialect == Dialect::Sqlite => {
                self.pos += 1;
                self.quoted(start, b']', false, "quoted identifier")?;
                Token::Other(start)
            }
            b'$' if self.dialect == Dialect::Postgres => {
                if let Some(tag_len) = self.dollar_tag() {
                    self.dollar_quoted(start, tag_len)?;
                } else {
                    self.pos += 1;
                }
                Token::Other(start)
            }
            b';' => {
                self.pos += 1;
                Token::Semicolon(start)
            }
            b'(' => {
                self.pos += 1;
                Token::Open(start)
            }
            b')' => {
                self.pos += 1;
                Token::Close(start)
            }
            b if is_ident_start(b) => {
                while self.peek(0).is_some_and(is_ident_char) {
                    self.pos += 1;
                }
                let word = &self.src[start..self.pos];
                // E'...' takes backslash escapes on PostgreSQL.
                if self.dialect == Dialect::Postgres
                    && word.eq_ignore_ascii_case(b"e")
                    && self.peek(0) == Some(b'\'')
                {
                    self.pos += 1;
                    self.quoted(start, b'\'', true, "string literal")?;
                    return Ok(Some(Token::Other(start)));
                }
                Token::Word(start..self.pos)
            }
            _ => {
                self.pos += 1;
                Token::Other(start)
            }
        };
        Ok(Some(token))
    }

    fn line_comment(&mut self) {
        while let Some(b) = self.peek(0) {
            if b == b'\n' {
                break;
            }
            self.pos += 1;
        }
    }

    fn block_comment(&mut self, start: usize) -> Result<(), LexError> {
        self.pos += 2;
        let mut depth = 1;
        while let Some(b) = self.peek(0) {
            if b == b'*' && self.peek(1) == Some(b'/') {
                self.pos += 2;
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            } else if b == b'/' && self.peek(1) == Some(b'*') && self.dialect == Dialect::Postgres {
                // PostgreSQL nests block comments; SQLite does not.
                self.pos += 2;
                depth += 1;
            } else {
                self.pos += 1;
            }
        }
        Err(LexError {
            offset: start,
            what: "block comment",
        })
    }

    /// Scans to the closing `close`; a doubled `close` is an escaped one.
    fn quoted(
        &mut self,
        start: usize,
        close: u8,
        backslash: bool,
        what: &'static str,
    ) -> Result<(), LexError> {
        while let Some(b) = self.peek(0) {
            if backslash && b == b'\\' {
                self.pos += 2;
            } else if b == close {
                if self.peek(1) == Some(close) && close != b']' {
                    self.pos += 2;
                } else {
                    self.pos += 1;
                    return Ok(());
                }
            } else {
                self.pos += 1;
            }
        }
        Err(LexError {
            offset: start,
            what,
        })
    }

    /// The length of a dollar-quote opening tag (`$$` or `$tag$`) at the
    /// current position, if there is one. `$1` is a parameter, not a tag.
    fn dollar_tag(&self) -> Option<usize> {
        let mut len = 1;
        match self.peek(len) {
            Some(b'$') => return Some(2),
            Some(b) if is_ident_start(b) => len += 1,
            _ => return None,
        }
        loop {
            match self.peek(len) {
                Some(b'$') => return Some(len + 1),
                Some(b) if is_ident_start(b) || b.is_ascii_digit() => len += 1,
                _ => return None,
            }
        }
    }

    fn dollar_quoted(&mut self, start: usize, tag_len: usize) -> Result<(), LexError> {
        let tag = &self.src[start..start + tag_len];
        self.pos += tag_len;
        while self.pos < self.src.len() {
            if self.src[self.pos..].starts_with(tag) {
                self.pos += tag_len;
                return Ok(());
            }
            self.pos += 1;
        }
        Err(LexError {
            offset: start,
            what: "dollar-quoted string",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str, dialect: Dialect) -> Vec<&str> {
        split(sql, dialect)
            .unwrap()
            .into_iter()
            .map(|s| &sql[s.range])
            .collect()
    }

    #[test]
    fn mysql_strings_take_backslash_escapes_and_double_quotes() {
        let sql = "INSERT INTO t VALUES ('it\\'s; fine', \"a \\\" ; b\", `we;ird`);\nSELECT 1;";
        assert_eq!(
            texts(sql, Dialect::Mysql),
            [
                "INSERT INTO t VALUES ('it\\'s; fine', \"a \\\" ; b\", `we;ird`);",
                "SELECT 1;"
            ]
        );
        // The same text on PostgreSQL ends inside a string.
        assert!(split("SELECT 'a\\';", Dialect::Postgres).is_ok());
        assert!(split("SELECT 'a\\';", Dialect::Mysql).is_err());
    }

    #[test]
    fn placeholders_are_question_marks_outside_quotes_and_comments() {
        let sql =
            "UPDATE `a?b` SET v = ?, w = 'x?' /* ? */ WHERE k = ? AND j = \"?\" -- ?\n AND n = ?";
        let before: Vec<&str> = placeholders(sql)
            .into_iter()
            .map(|i| &sql[i - 4..i])
            .collect();
        assert_eq!(before, ["v = ", "k = ", "n = "]);
    }

    #[test]
    fn mysql_comments() {
        let sql = "# a comment; still\nSELECT 1--1;\n-- real comment;\nSELECT 2; /* c; */";
        assert_eq!(texts(sql, Dialect::Mysql), ["SELECT 1--1;", "SELECT 2;"]);
    }

    #[test]
    fn mysql_executable_comments_are_sql() {
        // As mysqldump writes them: settings, and a view in three.
        let view = "/*!50001 CREATE ALGORITHM=UNDEFINED */\n/*!50013 DEFINER=`app`@`%` SQL SECURITY DEFINER */\n/*!50001 VIEW `v` AS select 1 AS `one` */;";
        let sql = format!("/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE */;\n{view}\n/*M!100100 SET x = 1 */;\n/* plain; */ SELECT 1;");
        let statements = split(&sql, Dialect::Mysql).unwrap();
        let texts: Vec<&str> = statements.iter().map(|s| &sql[s.range.clone()]).collect();
        assert_eq!(
            texts,
            [
                "/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE */;",
                view,
                "/*M!100100 SET x = 1 */;",
                "SELECT 1;"
            ]
        );
        // Their words are the statement's: the view is DDL.
        assert_eq!(statements[1].keywords, ["CREATE", "ALGORITHM"]);
        assert!(statements[1].commits_implicitly(Dialect::Mysql));
        assert_eq!(
            split("/*!50001 CREATE VIEW v AS SELECT 1", Dialect::Mysql)
                .unwrap_err()
                .what,
            "executable comment"
        );
        // Elsewhere they are comments.
        assert!(
            split("/*!50001 CREATE VIEW v AS SELECT 1 */;", Dialect::Postgres)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn mysql_compound_statements_stay_whole() {
        let body = "CREATE DEFINER = `app`@`%` PROCEDURE p()\nBEGIN\n  DECLARE i INT DEFAULT 0;\n  IF i = 0 THEN SET i = 1; END IF;\n  WHILE i < 3 DO SET i = i + 1; END WHILE;\n  lbl: LOOP LEAVE lbl; END LOOP;\n  REPEAT SET i = i - 1; UNTIL i = 0 END REPEAT;\n  CASE i WHEN 0 THEN SET i = 5; ELSE BEGIN END; END CASE;\n  SELECT CASE WHEN i > 1 THEN 'a' ELSE 'b' END;\nEND;";
        let sql = format!("{body}\nCREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.x = 1; END;\nDROP TABLE IF EXISTS x;");
        assert_eq!(
            texts(&sql, Dialect::Mysql),
            [
                body,
                "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.x = 1; END;",
                "DROP TABLE IF EXISTS x;"
            ]
        );
        // A table is no block: its statements split as usual.
        assert_eq!(
            texts("CREATE TABLE b (x INT);\nSELECT 1;", Dialect::Mysql),
            ["CREATE TABLE b (x INT);", "SELECT 1;"]
        );
    }

    #[test]
    fn splits_on_top_level_semicolons() {
        let sql = "CREATE TABLE a (x int);\n\nINSERT INTO a VALUES (1);  -- trailing\n";
        assert_eq!(
            texts(sql, Dialect::Postgres),
            ["CREATE TABLE a (x int);", "INSERT INTO a VALUES (1);"]
        );
    }

    #[test]
    fn last_statement_without_semicolon() {
        assert_eq!(
            texts("SELECT 1;\nSELECT 2\n\n", Dialect::Postgres),
            ["SELECT 1;", "SELECT 2"]
        );
    }

    #[test]
    fn comments_and_empty_statements_are_dropped() {
        let sql = "-- only a comment;\n/* block; */ ;;\n";
        assert!(texts(sql, Dialect::Postgres).is_empty());
        assert!(!has_code(sql));
        assert!(has_code("-- x\nSELECT 1"));
    }

    #[test]
    fn semicolons_inside_quotes_do_not_split() {
        let table: &[(&str, usize)] = &[
            ("SELECT 'a;b'; SELECT 2;", 2),
            ("SELECT 'it''s;'; SELECT 2;", 2),
            ("SELECT \"we;ird\" FROM t; SELECT 2;", 2),
            ("SELECT E'back\\';slash'; SELECT 2;", 2),
            ("SELECT $$a;b$$; SELECT 2;", 2),
            ("SELECT $tag$ $$ ; $tag$; SELECT 2;", 2),
            ("SELECT /* a; /* nested; */ still; */ 1; SELECT 2;", 2),
            ("SELECT $1; SELECT 2;", 2),
            ("SELECT a$b$c FROM t; SELECT 2;", 2),
            ("SELECT (1; 2); SELECT 3;", 2),
        ];
        for (sql, n) in table {
            assert_eq!(texts(sql, Dialect::Postgres).len(), *n, "{sql}");
        }
    }

    #[test]
    fn postgres_function_with_begin_atomic_stays_whole() {
        let sql = "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT CASE WHEN true THEN 1 END;\n  SELECT 2;\nEND;\nSELECT 3;";
        let parts = texts(sql, Dialect::Postgres);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(parts[0].ends_with("END;"));
    }

    #[test]
    fn plpgsql_body_in_dollar_quotes() {
        let sql = "CREATE FUNCTION f() RETURNS trigger AS $$\nBEGIN\n  RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;\nCREATE INDEX CONCURRENTLY i ON t (x);";
        assert_eq!(texts(sql, Dialect::Postgres).len(), 2);
    }

    #[test]
    fn sqlite_trigger_body_stays_whole() {
        let sql = "CREATE TEMP TRIGGER t AFTER INSERT ON a BEGIN\n  UPDATE b SET n = CASE WHEN n > 0 THEN n + 1 ELSE 1 END;\n  DELETE FROM c;\nEND;\nINSERT INTO a VALUES (1);";
        let parts = texts(sql, Dialect::Sqlite);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(parts[0].ends_with("END;"));
    }

    #[test]
    fn sqlite_bracket_and_backtick_identifiers() {
        assert_eq!(
            texts("SELECT [a;b], `c;d` FROM t; SELECT 1", Dialect::Sqlite).len(),
            2
        );
    }

    #[test]
    fn unterminated_constructs_are_reported_where_they_start() {
        let table: &[(&str, usize, &str)] = &[
            ("SELECT 1;\nSELECT 'abc", 17, "string literal"),
            ("SELECT \"abc", 7, "quoted identifier"),
            ("SELECT 1; /* never closed", 10, "block comment"),
            ("SELECT /* /* */ nested open", 7, "block comment"),
            ("DO $body$ BEGIN END; $bod$", 3, "dollar-quoted string"),
            ("SELECT E'\\'", 7, "string literal"),
        ];
        for (sql, offset, what) in table {
            let err = check_terminated(sql, Dialect::Postgres).unwrap_err();
            assert_eq!((err.offset, err.what), (*offset, *what), "{sql}");
            assert!(split(sql, Dialect::Postgres).is_err());
        }
        // SQLite does not nest comments and has no E'' strings.
        assert!(check_terminated("SELECT /* /* */ 1", Dialect::Sqlite).is_ok());
        assert!(check_terminated("SELECT e'\\'", Dialect::Sqlite).is_ok());
    }

    #[test]
    fn transaction_control_is_recognised() {
        let sql = "BEGIN; COMMIT; END; ROLLBACK; ROLLBACK TO SAVEPOINT s; START TRANSACTION; SAVEPOINT s; ABORT; SELECT 1;";
        let flags: Vec<bool> = split(sql, Dialect::Postgres)
            .unwrap()
            .iter()
            .map(Statement::is_transaction_control)
            .collect();
        assert_eq!(
            flags,
            [true, true, true, true, false, true, false, true, false]
        );
    }

    /// Found by fuzzing: a vertical tab was a token to the lexer but
    /// whitespace to `trim_end`, which made an empty statement range.
    #[test]
    fn vertical_tab_is_whitespace() {
        assert!(texts("\x0b", Dialect::Postgres).is_empty());
        assert_eq!(texts("SELECT 1\x0b", Dialect::Sqlite), ["SELECT 1"]);
        assert!(!has_code("\x0b\x0c \t"));
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "ab\ncé\nxyz";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 6), (2, 3));
        assert_eq!(line_col(text, 7), (3, 1));
    }
}
