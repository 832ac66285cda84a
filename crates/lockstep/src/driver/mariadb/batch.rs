//! lockstep's own writes, one at a time as prepared statements, or several
//! in one round trip: the writes that close a migration's transaction (the
//! fence, the history row, the next migration's `started` row) would
//! otherwise each wait for the server's answer before the next is sent.
//!
//! A batch is one query of several statements, so its values are written
//! into the text. They are written so that they read the same in every
//! session: numbers as digits, text as hex with its character set named
//! (`_utf8mb4 X'…'`). A quoted literal would not do: the session's
//! `sql_mode` decides how one escapes, and a migration may change it.

use std::fmt::Write as _;

use mysql::prelude::Queryable;

use super::MysqlDriver;

/// One of lockstep's statements and its values, in order of its
/// placeholders (`?`).
pub(super) struct Write {
    sql: String,
    values: Vec<mysql::Value>,
}

impl Write {
    pub fn new(sql: String, values: Vec<mysql::Value>) -> Self {
        Write { sql, values }
    }

    /// A statement without values.
    pub fn plain(sql: &str) -> Self {
        Write::new(sql.to_string(), Vec::new())
    }

    /// The statement with its values written in.
    fn inline(&self) -> String {
        let mut out = String::with_capacity(self.sql.len() + 32 * self.values.len());
        let mut from = 0;
        let at = crate::sql::placeholders(&self.sql);
        debug_assert_eq!(at.len(), self.values.len(), "{}", self.sql);
        for (at, value) in at.into_iter().zip(&self.values) {
            out.push_str(&self.sql[from..at]);
            literal(value, &mut out);
            from = at + 1;
        }
        out.push_str(&self.sql[from..]);
        out
    }
}

/// A value as a literal that reads the same whatever the session's
/// `sql_mode` or character set.
fn literal(value: &mysql::Value, out: &mut String) {
    match value {
        mysql::Value::Bytes(bytes) => {
            out.push_str("_utf8mb4 X'");
            for b in bytes {
                let _ = write!(out, "{b:02X}");
            }
            out.push('\'');
        }
        // Numbers and NULL: no quotes, nothing to escape.
        other => out.push_str(&other.as_sql(true)),
    }
}

impl MysqlDriver {
    /// Runs one write as a prepared statement: how many rows it changed.
    pub(super) fn run_write(&mut self, write: Write) -> Result<u64, mysql::Error> {
        self.conn
            .exec_drop(write.sql, mysql::Params::Positional(write.values))?;
        Ok(self.conn.affected_rows())
    }

    /// Runs writes in one round trip. The server stops at the first that
    /// fails, and that failure is the error, with its place; the writes
    /// before it are done, in whatever transaction the caller opened.
    pub(super) fn run_batch(&mut self, writes: &[Write]) -> Result<(), Failed> {
        if writes.is_empty() {
            return Ok(());
        }
        let text: Vec<String> = writes.iter().map(Write::inline).collect();
        let result = self
            .conn
            .query_iter(text.join(";\n"))
            .map_err(|error| Failed { at: 0, error })?;
        super::drain(result).map(drop)
    }
}

/// The write of a batch that failed: its place, and the server's error.
pub(super) struct Failed {
    pub at: usize,
    pub error: mysql::Error,
}

#[cfg(test)]
mod tests {
    use super::Write;

    #[test]
    fn values_are_written_in_as_literals_that_need_no_escaping() {
        let write = Write::new(
            "UPDATE `t?` SET a = ?, b = ?, c = ? WHERE d = '?' AND e = ?".into(),
            vec![
                mysql::Value::from("it's \\ é"),
                mysql::Value::Int(-7),
                mysql::Value::NULL,
                mysql::Value::from(""),
            ],
        );
        assert_eq!(
            write.inline(),
            "UPDATE `t?` SET a = _utf8mb4 X'69742773205C20C3A9', b = -7, c = NULL \
             WHERE d = '?' AND e = _utf8mb4 X''"
        );
    }
}
