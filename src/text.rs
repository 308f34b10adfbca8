//! Text that came from outside (Qlik responses, vault payloads) made safe to print.
//!
//! - [`escape`]: control characters (C0, DEL, C1) and Unicode bidi controls become visible
//!   escapes, so remote text can neither forge an output line (`\n`, `\r`) nor drive a terminal
//!   (ESC sequences) nor reorder what a reader sees (bidi overrides).
//! - [`cap`]: a length limit on a char boundary.
//! - [`Redactor`]: removes every secret in play, in the forms a server might echo it
//!   (raw, JSON-escaped, URL-encoded, base64 at any alignment).
//!
//! [`sanitize`] does all three, in the order that matters: redact first (a secret split by an
//! inserted escape would no longer match), then escape, then cap.

use std::{borrow::Cow, collections::BTreeSet, fmt, sync::OnceLock};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

/// The replacement for a redacted secret.
pub const REDACTED: &str = "[REDACTED]";

/// Secrets shorter than this are not searched for: a 3-character password would turn every
/// error text into `[REDACTED]` soup, and echoing it reveals little.
pub const MIN_SECRET_LEN: usize = 4;

/// Shorter base64 fragments are not searched for (they would match ordinary words).
const MIN_BASE64_FRAGMENT: usize = 6;

/// The most characters of one remote text (an error `detail`, …) that are ever printed.
pub const MAX_REMOTE_TEXT: usize = 512;

/// Whether `c` must not reach a terminal or a log line unescaped: C0 controls (tab and newline
/// included), DEL, C1 controls, and the Unicode bidi embedding, override and isolate controls
/// (and the implicit marks), which can make a line read differently from what it contains.
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{61c}' | '\u{200e}' | '\u{200f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        // Line and paragraph separators break lines in some viewers.
        | '\u{2028}' | '\u{2029}')
}

/// `s` with every [`is_unsafe`] character written as a visible escape (`\n`, `\r`, `\t`,
/// `\u{1b}`, …). Borrowed when there is nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One line of outside text, safe to print: every [`is_unsafe`] character escaped as in
/// [`escape`], cut at `max_chars` characters (`…` marks a cut).
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars));
    for (count, c) in text.chars().enumerate() {
        if count >= max_chars {
            out.push('…');
            break;
        }
        let mut buf = [0; 4];
        out.push_str(&escape(c.encode_utf8(&mut buf)));
    }
    out
}

/// `text` cut at `max_chars` characters, then quoted and escaped as Rust's `{:?}` does
/// (control characters as `\n`, `\u{1b}`): for names and ids that came from outside.
pub fn quoted(text: &str, max_chars: usize) -> String {
    let cut: String = text.chars().take(max_chars).collect();
    let shown = format!("{cut:?}");
    // `{:?}` already escapes controls; bidi and separator marks are escaped here too.
    let shown = escape(&shown).into_owned();
    if cut.len() < text.len() {
        format!("{shown}…")
    } else {
        shown
    }
}

/// The closest of `candidates` to `unknown` (Jaro-Winkler similarity at least 0.8, ties to the
/// first), when there is one.
pub fn closest<'a>(
    unknown: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    // A hostile or pasted name is compared only by its first 256 characters.
    let unknown: String = unknown.chars().take(256).collect::<String>().to_lowercase();
    let mut best: Option<(&str, f64)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&unknown, &c.to_lowercase());
        if score >= 0.8 && best.is_none_or(|(_, b)| score > b) {
            best = Some((c, score));
        }
    }
    best.map(|(c, _)| c)
}

/// `; did you mean "x"?` for the [`closest`] candidate (quoted and escaped), or nothing. A
/// hint for an unknown job, connector, source or config key.
pub fn did_you_mean<'a>(unknown: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(unknown, candidates)
        .map(|c| format!("; did you mean {}?", quoted(c, 200)))
        .unwrap_or_default()
}

/// Displays its text through [`escape`]: `format!("{}", Escaped(remote))`.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// At most `max` characters of `s` (on a char boundary), with `…[N more characters]` when cut.
pub fn cap(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((at, _)) => {
            let rest = s[at..].chars().count();
            Cow::Owned(format!("{}…[{rest} more characters]", &s[..at]))
        }
    }
}

/// Redact, escape and cap one remote text for an error message.
pub fn sanitize(s: &str, redactor: &Redactor) -> String {
    let redacted = redactor.redact(s);
    let escaped = escape(&redacted);
    cap(&escaped, MAX_REMOTE_TEXT).into_owned()
}

/// The secrets in play for one request, in every form a server might echo them.
///
/// Built from the API key, the OAuth client secret and access token, and the values being
/// written. Each secret contributes its raw form, its JSON-escaped forms (a server that quotes
/// our body inside an error string), its URL-encoded forms (form encoding and strict percent
/// encoding, upper- and lower-case hex) and the base64 of each of these in both alphabets at
/// each of the three byte alignments (so it is also found inside a larger base64 blob such as
/// a `Basic` header or a whole request body). The patterns themselves are secret: held in [`SecretString`]s and never
/// printed.
#[derive(Default, Clone)]
pub struct Redactor {
    /// The secrets as given (at least [`MIN_SECRET_LEN`] characters).
    secrets: Vec<SecretString>,
    /// Every form of every secret, longest first; computed on first use, so a request that
    /// succeeds never pays for it.
    patterns: OnceLock<Vec<SecretString>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// An empty redactor (removes nothing).
    pub fn new() -> Self {
        Redactor::default()
    }

    /// Adds one secret. Secrets shorter than [`MIN_SECRET_LEN`] are ignored.
    pub fn add(&mut self, secret: &str) {
        if secret.chars().count() < MIN_SECRET_LEN
            || self.secrets.iter().any(|s| s.expose_secret() == secret)
        {
            return;
        }
        self.secrets.push(SecretString::from(secret.to_owned()));
        self.patterns = OnceLock::new();
    }

    /// Adds a secret held in a [`SecretString`].
    pub fn add_secret(&mut self, secret: &SecretString) {
        self.add(secret.expose_secret());
    }

    /// This redactor plus everything `other` removes.
    pub fn merged(&self, other: &Redactor) -> Redactor {
        let mut out = Redactor {
            secrets: self.secrets.clone(),
            patterns: OnceLock::new(),
        };
        for s in &other.secrets {
            out.add_secret(s);
        }
        out
    }

    /// Whether it removes nothing.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every form of every secret replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let patterns = self.patterns.get_or_init(|| {
            let mut all: BTreeSet<String> = BTreeSet::new();
            for s in &self.secrets {
                all.extend(forms(s.expose_secret()));
            }
            let mut v: Vec<SecretString> = all.into_iter().map(SecretString::from).collect();
            // Longest first: a longer form (the URL-encoded one) must be replaced before a
            // shorter one it contains.
            v.sort_by_key(|p| std::cmp::Reverse(p.expose_secret().len()));
            v
        });
        let mut out = text.to_owned();
        for p in patterns {
            let p = p.expose_secret();
            if out.contains(p) {
                out = out.replace(p, REDACTED);
            }
        }
        out
    }
}

/// Every form of `secret` a server might echo: raw, JSON-escaped, URL-encoded, and the base64
/// of each of these.
fn forms(secret: &str) -> BTreeSet<String> {
    let mut forms: BTreeSet<String> = BTreeSet::new();
    forms.insert(secret.to_owned());
    for json in json_forms(secret) {
        forms.insert(json);
    }
    for url in url_forms(secret) {
        forms.insert(url.to_ascii_lowercase());
        forms.insert(lower_hex(&url));
        forms.insert(url);
    }
    // Base64 of every form above: a server may base64 a body in which the secret was
    // JSON-escaped (our PATCH and token bodies are JSON) or URL-encoded.
    let texts: Vec<String> = forms.iter().cloned().collect();
    for text in texts {
        for b64 in base64_forms(text.as_bytes()) {
            if b64.len() >= MIN_BASE64_FRAGMENT {
                forms.insert(b64);
            }
        }
    }
    forms.retain(|f| f.chars().count() >= MIN_SECRET_LEN);
    forms
}

/// JSON string escapings of `s` without the quotes: serde's (minimal) form, the form with `/`
/// escaped, and the ASCII-only form with `\uXXXX` for everything outside ASCII.
fn json_forms(s: &str) -> Vec<String> {
    let minimal = serde_json::to_string(s).expect("a string always serialises");
    let minimal = minimal[1..minimal.len() - 1].to_owned();
    let slash = minimal.replace('/', "\\/");
    let mut ascii = String::with_capacity(minimal.len());
    for c in minimal.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    let ascii_upper = {
        let mut o = String::with_capacity(ascii.len());
        let mut rest = ascii.as_str();
        while let Some(i) = rest.find("\\u") {
            o.push_str(&rest[..i + 2]);
            let hex_end = (i + 6).min(rest.len());
            o.push_str(&rest[i + 2..hex_end].to_ascii_uppercase());
            rest = &rest[hex_end..];
        }
        o.push_str(rest);
        o
    };
    vec![minimal, slash, ascii, ascii_upper]
}

/// URL encodings of `s` (upper-case hex): form encoding (`+` for space), RFC 3986 strict
/// (`-._~` kept), JavaScript's `encodeURIComponent`, and everything non-alphanumeric encoded.
fn url_forms(s: &str) -> Vec<String> {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    const URI_COMPONENT: &AsciiSet = &RFC3986
        .remove(b'!')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    vec![
        form_urlencoded::byte_serialize(s.as_bytes()).collect(),
        utf8_percent_encode(s, RFC3986).to_string(),
        utf8_percent_encode(s, URI_COMPONENT).to_string(),
        utf8_percent_encode(s, NON_ALPHANUMERIC).to_string(),
    ]
}

/// `s` with the hex digits after each `%` in lower case.
fn lower_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut hex = 0;
    for c in s.chars() {
        if c == '%' {
            hex = 2;
            out.push(c);
        } else if hex > 0 {
            hex -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The base64 text that `bytes` contributes to any base64 encoding containing them, at each
/// of the three byte alignments, in the standard and URL-safe alphabets. Characters that also
/// depend on neighbouring bytes are left out, so the fragment matches wherever the secret sits
/// inside a larger encoded blob (e.g. `Basic base64(client_id:client_secret)`), and the whole
/// encoding of the secret alone contains the fragment for alignment 0.
fn base64_forms(bytes: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut out = Vec::new();
    for offset in 0..3usize {
        let mut buf = vec![0u8; offset];
        buf.extend_from_slice(bytes);
        // Leading characters that mix filler bits: 0, 2 or 3.
        let skip = [0, 2, 3][offset];
        // A trailing partial group's last character mixes in the following byte.
        let drop_tail = usize::from(buf.len() % 3 != 0);
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let enc = engine.encode(&buf);
            if enc.len() > skip + drop_tail {
                out.push(enc[skip..enc.len() - drop_tail].to_owned());
            }
        }
    }
    out
}

/// Whether an `*_env` value looks like a conventional variable name (`QLIK_API_KEY`), so it
/// can be printed: upper case, digits and `_`, at most 64 characters. Anything else may be a
/// secret pasted by mistake and is not shown.
pub fn looks_like_variable(name: &str) -> bool {
    name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    #[test]
    fn did_you_mean_suggests_the_closest_name_only_when_it_is_close() {
        let jobs = ["sales-s3", "finance-pg", "hr-mssql"];
        assert_eq!(
            super::did_you_mean("sales-s4", jobs),
            "; did you mean \"sales-s3\"?"
        );
        assert_eq!(super::closest("FINANCE-PG", jobs), Some("finance-pg"));
        assert_eq!(super::did_you_mean("zzz", jobs), "");
        assert_eq!(super::did_you_mean("x", []), "");
        // A candidate with control characters is printed escaped.
        assert_eq!(
            super::did_you_mean("ab\u{1b}c", ["ab\u{1b}c"]),
            "; did you mean \"ab\\u{1b}c\"?"
        );
    }

    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    const SECRET: &str = "CANARY-p@ss/wörd \"q\"+&=";

    fn r() -> Redactor {
        let mut r = Redactor::new();
        r.add(SECRET);
        r
    }

    #[test]
    fn escapes_c0_del_c1_and_bidi_controls() {
        assert_eq!(escape("plain text – ünïcode"), "plain text – ünïcode");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nb\rc\td\u{1b}[31m\u{7f}\u{85}\u{9b}"),
            "a\\nb\\rc\\td\\u{1b}[31m\\u{7f}\\u{85}\\u{9b}"
        );
        assert_eq!(
            escape("x\u{202e}y\u{2066}z\u{200f}\u{2028}"),
            "x\\u{202e}y\\u{2066}z\\u{200f}\\u{2028}"
        );
        for c in (0u32..=0x10ffff)
            .filter_map(char::from_u32)
            .filter(|c| is_unsafe(*c))
        {
            let e = escape(&c.to_string()).into_owned();
            assert!(!e.chars().any(is_unsafe), "{c:?}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn caps_on_a_char_boundary() {
        assert_eq!(cap("abc", 3), "abc");
        assert_eq!(cap("äöüß", 2), "äö…[2 more characters]");
    }

    #[test]
    fn redacts_raw_json_url_and_base64_echoes() {
        let r = r();
        let json = serde_json::to_string(SECRET).unwrap();
        let json = &json[1..json.len() - 1];
        let form: String = form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
        let pct = percent_encoding::utf8_percent_encode(SECRET, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        let echoes = [
            SECRET.to_owned(),
            json.to_owned(),
            json.replace('/', "\\/"),
            form.clone(),
            form.to_ascii_lowercase(),
            pct.clone(),
            lower_hex(&pct),
            STANDARD.encode(SECRET),
            URL_SAFE.encode(SECRET),
            // Inside a larger blob at every alignment (a Basic header).
            STANDARD.encode(format!("client:{SECRET}")),
            STANDARD.encode(format!("c:{SECRET}:tail")),
            STANDARD.encode(format!("cl:{SECRET}xy")),
            URL_SAFE.encode(format!("{{\"password\":\"{SECRET}\"}}")),
            // A whole JSON body, where the secret is JSON-escaped, in base64.
            STANDARD.encode(serde_json::json!({"id": "c", "secret": SECRET}).to_string()),
            STANDARD.encode(format!("a={form}&b=1")),
        ];
        for (i, echo) in echoes.iter().enumerate() {
            let text = format!("bad value <{echo}> here");
            let out = r.redact(&text);
            assert!(out.contains(REDACTED), "case {i}: {out}");
            assert!(!out.contains(echo.as_str()), "case {i}: {out}");
            assert!(!out.contains("CANARY"), "case {i}: {out}");
        }
    }

    #[test]
    fn short_secrets_are_not_searched_for_and_debug_shows_no_pattern() {
        let mut r = Redactor::new();
        r.add("abc");
        assert!(r.is_empty());
        assert_eq!(r.redact("abc abc"), "abc abc");
        let r = super::tests::r();
        assert!(!format!("{r:?}").contains("CANARY"));
    }

    #[test]
    fn sanitize_redacts_before_escaping_and_caps() {
        let mut r = Redactor::new();
        r.add("line1\nline2-secret");
        let out = sanitize("echo: line1\nline2-secret\nforged: ok", &r);
        assert_eq!(out, "echo: [REDACTED]\\nforged: ok");
        let long = "x".repeat(MAX_REMOTE_TEXT + 10);
        assert!(sanitize(&long, &r).ends_with("…[10 more characters]"));
    }
}
