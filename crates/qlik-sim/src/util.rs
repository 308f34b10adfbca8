//! Small helpers: URL encoding, query parsing, timestamps.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};

/// Decodes `%XX` escapes (and `+` as space when `plus_as_space`). Invalid escapes are kept.
pub fn percent_decode(s: &str, plus_as_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes everything except RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses `a=1&b=x+y` (query strings and form bodies). Later keys win.
pub fn parse_urlencoded(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// RFC 3339 with milliseconds and `Z`, e.g. `2026-07-20T10:00:00.123Z`.
pub fn fmt_ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trip() {
        let s = "qName eq \"a b/c\"";
        assert_eq!(percent_decode(&percent_encode(s), false), s);
        assert_eq!(percent_decode("a+b%20c%zz%", true), "a b c%zz%");
        let q = parse_urlencoded("type=connectionname&spaceId=s%201&x");
        assert_eq!(q["type"], "connectionname");
        assert_eq!(q["spaceId"], "s 1");
        assert_eq!(q["x"], "");
    }
}
