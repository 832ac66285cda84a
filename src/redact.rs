//! Hides passwords in text that may quote a command line: an argument
//! parser's error echoes the argument it did not expect, a missing config
//! file is named by the path it was given, and either may be a database URL
//! typed in the wrong place. Every error passes through here before it is
//! shown.

use std::ops::Range;

/// `text` with the password of every URL-shaped part (`scheme://user:password@`)
/// and every `password=value` replaced by `***`. Errs on the side of hiding:
/// a password may hold anything a URL parser lets through (quotes, spaces,
/// `/`, `?`, `@`, even `password=`), so a URL's user info runs to its last
/// `@` before the next URL, a `password=` value to the next `&`, and where
/// the two overlap everything in either is hidden.
pub fn urls(text: &str) -> String {
    let mut hidden = user_info_passwords(text);
    hidden.extend(password_values(text));
    hidden.sort_by_key(|span| span.start);
    let mut out = String::with_capacity(text.len());
    let mut shown_from = 0;
    let mut spans = hidden.into_iter().peekable();
    while let Some(mut span) = spans.next() {
        // One mask for spans that overlap or touch.
        while let Some(next) = spans.next_if(|next| next.start <= span.end) {
            span.end = span.end.max(next.end);
        }
        let start = span.start.max(shown_from);
        out.push_str(&text[shown_from..start]);
        out.push_str("***");
        shown_from = span.end.max(start);
    }
    out.push_str(&text[shown_from..]);
    out
}

/// The password of each `scheme://user:password@` in `text`: after the
/// user's `:`, up to the last `@` before the next URL.
fn user_info_passwords(text: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let end = text[start..]
            .find("://")
            .map_or(text.len(), |next| start + next);
        let url = &text[start..end];
        if let Some(at) = url.rfind('@') {
            if let Some(colon) = url[..at].find(':') {
                // Already masked, as lockstep shows every URL: the `@`s
                // after it are the text's own (MariaDB names a user as
                // 'user'@'host').
                if !url[colon + 1..].starts_with("***@") {
                    spans.push(start + colon + 1..start + at);
                }
            }
        }
        from = end;
    }
    spans
}

/// The value of each `password=` in `text` (a URL's query parameter, or a
/// libpq-style setting), up to the next `&`, as a URL parser reads it.
fn password_values(text: &str) -> Vec<Range<usize>> {
    const KEY: &str = "password=";
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(KEY) {
        let key = from + found;
        let value = key + KEY.len();
        let starts_key = text[..key]
            .chars()
            .next_back()
            .is_none_or(|c| matches!(c, '?' | '&' | ';' | '\'' | '"' | '`') || c.is_whitespace());
        let end = text[value..]
            .find('&')
            .map_or(text.len(), |amp| value + amp);
        if starts_key && end > value {
            spans.push(value..end);
        }
        from = value;
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_and_parameters_are_hidden() {
        let table = [
            (
                "unexpected argument 'postgres://u:PW@h/db' found",
                "unexpected argument 'postgres://u:***@h/db' found",
            ),
            (
                "cannot read config file postgres://alice:s3cr%40t@db:5432/app?sslmode=require: not found",
                "cannot read config file postgres://alice:***@db:5432/app?sslmode=require: not found",
            ),
            // Not percent-encoded: hidden whole, up to the last `@`.
            ("x postgres://u:a/b@c@h/d y", "x postgres://u:***@h/d y"),
            ("'postgres://u:it's a?secret@h/d'", "'postgres://u:***@h/d'"),
            ("postgresql://u:p@[::1]:5432/d", "postgresql://u:***@[::1]:5432/d"),
            ("mysql://root:PW@h/d and sqlite://a.db", "mysql://root:***@h/d and sqlite://a.db"),
            // Over-hiding is the safe side: an `@` later in the text.
            ("postgres://u:p@h/d?user=x@y", "postgres://u:***@y"),
            // Where the two overlap, both are hidden whole.
            ("postgres://u:p@h/d?password=a@b", "postgres://u:***"),
            ("postgres://u:pw;password=@h", "postgres://u:***"),
            ("postgres://u@h/d?password=PW&sslmode=disable", "postgres://u@h/d?password=***&sslmode=disable"),
            ("host=h password=PW user=u", "host=h password=***"),
            ("password=a b\nc&d=e", "password=***&d=e"),
            // Not secrets: a user without a password, a word that ends in
            // `password=`, text without URLs.
            ("postgres://u@h/d", "postgres://u@h/d"),
            ("mypassword=x", "mypassword=x"),
            ("no such file", "no such file"),
            ("://", "://"),
            ("a://:@", "a://:***@"),
            // A URL shown masked keeps the text after it.
            (
                "cannot connect to mysql://u:***@h/d: Access denied for user 'u'@'h'",
                "cannot connect to mysql://u:***@h/d: Access denied for user 'u'@'h'",
            ),
        ];
        for (text, want) in table {
            assert_eq!(urls(text), want, "{text}");
        }
    }
}
