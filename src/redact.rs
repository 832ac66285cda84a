//! Hides passwords in text that may quote a command line: an argument
//! parser's error echoes the argument it did not expect, a missing config
//! file is named by the path it was given, and either may be a database URL
//! typed in the wrong place. Every error passes through here before it is
//! shown.

/// `text` with the password of every URL-shaped part (`scheme://user:password@`)
/// and every `password=value` replaced by `***`. Errs on the side of hiding:
/// a password may hold anything a URL parser lets through (quotes, spaces,
/// `/`, `?`, `@`), so a URL's user info runs to its last `@` before the next
/// URL, and a `password=` value to the next `&`, as a URL parser reads it.
pub fn urls(text: &str) -> String {
    // `password=` values first: hiding a URL's user info up to its last `@`
    // could swallow the key of a value that holds an `@`.
    let text = password_parameters(text);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after.find("://").unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        out.push_str(&without_password(url));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// The text after `scheme://` (up to the next URL), its user info's
/// password hidden.
fn without_password(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &url[..at];
    match userinfo.find(':') {
        Some(colon) => format!("{}:***{}", &userinfo[..colon], &url[at..]),
        None => url.to_string(),
    }
}

/// `password=value` (a URL's query parameter, or a libpq-style setting)
/// with the value hidden.
fn password_parameters(text: &str) -> String {
    const KEY: &str = "password=";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(KEY) {
        let starts_key = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| matches!(c, '?' | '&' | ';' | '\'' | '"' | '`') || c.is_whitespace());
        let (before, after) = rest.split_at(at + KEY.len());
        out.push_str(before);
        if !starts_key {
            rest = after;
            continue;
        }
        let end = after.find('&').unwrap_or(after.len());
        if end > 0 {
            out.push_str("***");
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
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
            (
                "postgres://u:p@h/d?password=a@b",
                "postgres://u:***@h/d?password=***",
            ),
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
        ];
        for (text, want) in table {
            assert_eq!(urls(text), want, "{text}");
        }
    }
}
