//! Migration versions: whole numbers, and Flyway's dotted ones.

use std::fmt;
use std::str::FromStr;

/// A migration's version: a whole number (`42`, `20240101120000`), or
/// Flyway's dotted or underscored one (`1.2.3`, `1_2_3`, jetbase's
/// `20251225.120000`). Ordered as Flyway orders them: part by part,
/// numerically, a missing part counting as 0, so that `1` and `1.0` are
/// one version and `1 < 1.1 < 1.2 < 1.10 < 2`.
///
/// The first part has at most 18 digits (it fits a signed 64-bit column on
/// every engine, as whole versions always have); at most three parts
/// follow it, of at most 9 digits each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    head: u64,
    /// The parts after the first; trailing zeros are no parts.
    tail: [u32; Version::MAX_TAIL],
}

impl Version {
    /// How many parts may follow the first.
    pub const MAX_TAIL: usize = 3;

    /// The largest version a file name may carry: 18 nines.
    pub const MAX_WHOLE: u64 = 999_999_999_999_999_999;

    /// A whole version.
    pub const fn whole(n: u64) -> Version {
        Version {
            head: n,
            tail: [0; Version::MAX_TAIL],
        }
    }

    /// Parses a version: digits, or parts of digits separated by `.` or
    /// `_` (Flyway's two spellings; not both in one version).
    pub fn parse(text: &str) -> Result<Version, String> {
        let separator = if text.contains('.') { '.' } else { '_' };
        let mut parts = text.split(separator);
        let head = parts.next().unwrap_or_default();
        let number = |part: &str, max_digits: usize| -> Result<u64, String> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("version `{text}` is not a number"));
            }
            let significant = part.trim_start_matches('0');
            if significant.len() > max_digits {
                return Err(match max_digits {
                    18 => format!("version `{text}` has more than 18 digits"),
                    _ => format!(
                        "version `{text}` has a part of more than {max_digits} digits after its first"
                    ),
                });
            }
            Ok(significant.parse().unwrap_or(0))
        };
        let mut version = Version::whole(number(head, 18)?);
        for (i, part) in parts.enumerate() {
            let Some(slot) = version.tail.get_mut(i) else {
                return Err(format!(
                    "version `{text}` has more than {} parts",
                    Version::MAX_TAIL + 1
                ));
            };
            // Nine digits always fit 32 bits.
            *slot = number(part, 9)? as u32;
        }
        Ok(version)
    }

    /// The first part: the whole number, or what comes before the first
    /// dot.
    pub fn first(self) -> u64 {
        self.head
    }

    /// The whole number, when the version is one.
    pub fn as_whole(self) -> Option<u64> {
        self.is_whole().then_some(self.head)
    }

    /// Whether the version is a whole number (no part after the first but
    /// zeros).
    pub fn is_whole(self) -> bool {
        self.tail == [0; Version::MAX_TAIL]
    }
}

impl From<u64> for Version {
    fn from(n: u64) -> Version {
        Version::whole(n)
    }
}

impl FromStr for Version {
    type Err = String;
    fn from_str(text: &str) -> Result<Version, String> {
        Version::parse(text)
    }
}

/// Parts joined by `.`, trailing zeros left out: `1.2.3`, `7`.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = self.tail.iter().rposition(|&p| p != 0).map_or(0, |i| i + 1);
        let mut text = self.head.to_string();
        for part in &self.tail[..parts] {
            text.push('.');
            text.push_str(&part.to_string());
        }
        // Padding and alignment, as a table's column asks.
        f.pad(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn versions_order_as_flyway_orders_them() {
        let ordered = [
            "0.9",
            "1",
            "1.0.1",
            "1.1",
            "1.2",
            "1.10",
            "2",
            "10",
            "20251225.120000",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(v("1"), v("1.0"));
        assert_eq!(v("1.0.0.0"), v("001"));
        assert_eq!(v("1_12_15"), v("1.12.15"));
        assert_eq!(Version::from(7), v("7"));
    }

    #[test]
    fn versions_print_as_dotted_numbers() {
        for (text, shown) in [
            ("42", "42"),
            ("0042", "42"),
            ("1.2.3", "1.2.3"),
            ("1_12_15", "1.12.15"),
            ("1.0", "1"),
            ("1.0.2", "1.0.2"),
            ("20251225.120000", "20251225.120000"),
        ] {
            assert_eq!(v(text).to_string(), shown, "{text}");
            assert_eq!(v(shown), v(text));
        }
        assert_eq!(format!("{:<6}|", v("1.2")), "1.2   |");
        assert_eq!(v("5").as_whole(), Some(5));
        assert_eq!(v("5.1").as_whole(), None);
    }

    #[test]
    fn bad_versions_say_why() {
        for (text, why) in [
            ("", "is not a number"),
            ("1.", "is not a number"),
            (".1", "is not a number"),
            ("1..2", "is not a number"),
            ("1.2_3", "is not a number"),
            ("a", "is not a number"),
            ("-1", "is not a number"),
            ("1234567890123456789", "more than 18 digits"),
            ("1.1234567890", "more than 9 digits after its first"),
            ("1.2.3.4.5", "more than 4 parts"),
        ] {
            let err = Version::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert_eq!(v("999999999999999999").as_whole(), Some(Version::MAX_WHOLE));
        assert_eq!(v("1.000000000999999999"), v("1.999999999"));
    }
}
