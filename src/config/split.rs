//! Splitting a configuration file into its `[[jobs]]` entries and the rest, so that a file of
//! many jobs is parsed one entry at a time.
//!
//! A TOML parse holds the whole document several times over (tokens, parse events, a spanned
//! tree, the value tree): about 4.5 KB per 175-byte job, a start-up peak of ~58 MiB for 10,000
//! jobs. Parsing each `[[jobs]]` entry on its own and turning it into its [`JobConfig`] before
//! the next keeps only the text and the compact jobs.
//!
//! The split only cuts where the full parse would see the same thing: at a header (`[x]` or
//! `[[x]]`) that starts a line outside any value. An entry is its `[[jobs]]` header and the
//! `[jobs.…]` / `[[jobs.…]]` headers after it (sub-tables of the same entry); everything else
//! is the rest, kept in order. Whatever the splitter does not recognise (a quoted or
//! unbalanced header, `jobs` as a plain table, a `jobs.…` header before the first entry)
//! returns `None`, and the caller parses the whole document as before, so errors and their
//! positions are those of the full parse.
//!
//! [`JobConfig`]: super::JobConfig

use toml_parser::{Source, lexer::TokenKind};

/// A document cut into its `[[jobs]]` entries and the rest.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Split<'a> {
    /// Everything but the `[[jobs]]` entries, in document order.
    pub rest: String,
    /// Each `[[jobs]]` entry: its header, keys and sub-table headers.
    pub jobs: Vec<&'a str>,
}

/// What a header line is, for the split.
#[derive(Debug, PartialEq, Eq)]
enum Header {
    /// `[[jobs]]`: a new entry.
    JobsEntry,
    /// `[jobs.…]` or `[[jobs.…]]`: part of the current entry.
    JobsPart,
    /// Any other table.
    Other,
}

/// Cuts `text` into its `[[jobs]]` entries and the rest, or `None` when the document has no
/// entry or a shape the split does not handle (the caller then parses it whole).
pub(super) fn split(text: &str) -> Option<Split<'_>> {
    let mut out = Split::default();
    // Start of the piece being collected, and whether it is a jobs entry.
    let mut piece_start = 0;
    let mut piece_is_job = false;
    let mut depth = 0usize;
    let mut line_start = true;
    let mut tokens = Source::new(text).lex().peekable();
    while let Some(token) = tokens.next() {
        let kind = token.kind();
        match kind {
            TokenKind::Newline => {
                line_start = true;
                continue;
            }
            TokenKind::Whitespace | TokenKind::Comment | TokenKind::Eof => continue,
            TokenKind::LeftSquareBracket if depth == 0 && line_start => {
                let start = token.span().start();
                let header = header(text, &mut tokens)?;
                let job = match header {
                    Header::JobsEntry => true,
                    Header::JobsPart if piece_is_job => true,
                    Header::JobsPart => return None,
                    Header::Other => false,
                };
                if header == Header::JobsPart {
                    // The same entry goes on.
                } else {
                    out.take(&text[piece_start..start], piece_is_job);
                    piece_start = start;
                    piece_is_job = job;
                }
            }
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.checked_sub(1)?;
            }
            _ => {}
        }
        line_start = false;
    }
    if depth != 0 {
        return None;
    }
    out.take(&text[piece_start..], piece_is_job);
    (!out.jobs.is_empty()).then_some(out)
}

impl<'a> Split<'a> {
    fn take(&mut self, piece: &'a str, is_job: bool) {
        if is_job {
            self.jobs.push(piece);
        } else {
            self.rest.push_str(piece);
        }
    }
}

/// Reads a header after its first `[`, up to its last `]`; `None` for a header the split does
/// not handle (quoted keys, a malformed header).
fn header(
    text: &str,
    tokens: &mut std::iter::Peekable<toml_parser::lexer::Lexer<'_>>,
) -> Option<Header> {
    let array = tokens
        .next_if(|t| t.kind() == TokenKind::LeftSquareBracket)
        .is_some();
    let mut keys: Vec<&str> = Vec::new();
    let mut dot_expected = false;
    loop {
        let token = tokens.next()?;
        match token.kind() {
            TokenKind::Whitespace => {}
            TokenKind::Atom if !dot_expected => {
                keys.push(&text[token.span().start()..token.span().end()]);
                dot_expected = true;
            }
            TokenKind::Dot if dot_expected => dot_expected = false,
            TokenKind::RightSquareBracket if dot_expected => break,
            _ => return None,
        }
    }
    if array && tokens.next()?.kind() != TokenKind::RightSquareBracket {
        return None;
    }
    // A bare key with a dot inside would be lexed as one atom only if it were a number-like
    // key; "jobs" never is.
    Some(match keys.as_slice() {
        ["jobs"] if array => Header::JobsEntry,
        ["jobs"] => return None,
        ["jobs", ..] => Header::JobsPart,
        _ => Header::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_rest_are_cut_at_top_level_headers() {
        let text = "# c\n[qlik]\na = 1\n[[jobs]]\nname = \"a\"\n[jobs.connection]\nid = \"x\"\n\
                    [daemon]\nb = [\n[1],\n]\n[[jobs]]\nname = \"b\"\ns = \"\"\"\n[[jobs]]\n\"\"\"\n";
        let s = split(text).expect("split");
        assert_eq!(
            s.jobs,
            [
                "[[jobs]]\nname = \"a\"\n[jobs.connection]\nid = \"x\"\n",
                "[[jobs]]\nname = \"b\"\ns = \"\"\"\n[[jobs]]\n\"\"\"\n"
            ]
        );
        assert_eq!(s.rest, "# c\n[qlik]\na = 1\n[daemon]\nb = [\n[1],\n]\n");
    }

    const HEAD: &str = "[qlik]\ntenant_url = \"https://acme.eu.qlikcloud.com\"\n\
                        api_key_env = \"QLIK_API_KEY\"\n[sources.v]\ntype = \"file\"\npath = \"v\"\n";

    fn job(i: usize) -> String {
        format!(
            "[[jobs]]\nname = \"j{i}\"\nconnection = {{ id = \"00000000-0000-4000-8000-{i:012}\" }}\n\
             connector = \"mssql\"\nsource = \"v\"\nsecret = \"s/{i}\"\n"
        )
    }

    /// `load_str` (split when it can) and a parse of the whole document give the same config
    /// or the same errors, for documents the split takes and documents it hands back.
    fn same_as_whole(text: &str) -> String {
        let env: std::collections::HashMap<String, String> = [(
            "QLIK_ROTATOR__DAEMON__STATE_DIR".to_owned(),
            "/st".to_owned(),
        )]
        .into();
        let split_way = super::super::load_str(text, std::path::Path::new("/b"), &env);
        let whole_way = super::super::parse(text, Some(env.clone()))
            .map_err(|e| super::super::ConfigErrors(vec![super::super::syntax_error(text, &e)]))
            .and_then(|tree| super::super::validate(&tree, std::path::Path::new("/b")));
        let show = |r: &Result<super::super::Config, super::super::ConfigErrors>| match r {
            Ok(c) => format!("{c:?}"),
            Err(e) => {
                e.0.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        };
        assert_eq!(show(&split_way), show(&whole_way), "{text}");
        show(&split_way)
    }

    /// (name, configuration, part of what both loads say) of `a_split_load_equals_a_whole_load`.
    fn split_cases() -> Vec<(&'static str, String, &'static str)> {
        let jobs: String = (0..50).map(job).collect();
        vec![
            ("valid", format!("{HEAD}{jobs}"), "state_dir: \"/st\""),
            (
                "sections after and between jobs",
                format!(
                    "{}[daemon]\nmax_concurrent_rotations = 3\n{}",
                    job(1),
                    job(2)
                )
                .replace(
                    "[[jobs]]\nname = \"j1\"",
                    &format!("{HEAD}[[jobs]]\nname = \"j1\""),
                ),
                "max_concurrent_rotations: 3",
            ),
            (
                "a sub-table of an entry",
                format!(
                    "{HEAD}[[jobs]]\nname = \"a\"\nconnector = \"mssql\"\nsource = \"v\"\n\
                         secret = \"s\"\n[jobs.connection]\nid = \"00000000-0000-4000-8000-000000000001\"\n"
                ),
                "name: \"a\"",
            ),
            (
                "duplicate names",
                format!("{HEAD}{}{}", job(1), job(1)),
                "jobs[1].name: duplicate job name",
            ),
            (
                "an invalid entry",
                format!("{HEAD}{}[[jobs]]\nname = 5\n", job(1)),
                "jobs[1].name",
            ),
            (
                "unknown key in an entry",
                format!("{HEAD}{}x = 1\n", job(1)),
                "jobs[0].x: unknown key",
            ),
            (
                "unknown root key",
                format!("zz = 1\n{HEAD}{}", job(1)),
                "zz: unknown key (expected one of: daemon, events, jobs",
            ),
            (
                "syntax error in an entry (position of the whole file)",
                format!("{HEAD}{}{}secret_x = \"CANARY-split-1\n", job(1), job(2)),
                "line 19, column 27",
            ),
            (
                "syntax error in the rest",
                format!("{HEAD}oops\n{}", job(1)),
                "line 7",
            ),
            (
                "duplicate key across an entry",
                format!("{HEAD}{}name = \"b\"\n", job(1)),
                "line",
            ),
            (
                "jobs also a plain table",
                format!("{HEAD}{}[jobs]\n", job(1)),
                "line 13, column 2: duplicate key",
            ),
            (
                "two [qlik] tables",
                format!("{HEAD}{}[qlik]\n", job(1)),
                "line",
            ),
        ]
    }

    #[test]
    fn a_split_load_equals_a_whole_load() {
        let cases = split_cases();
        println!("{} cases", cases.len());
        for (name, text, expect) in &cases {
            let out = same_as_whole(text);
            assert!(out.contains(expect), "{name}: {out}");
            assert!(
                !out.contains("CANARY-split-1"),
                "{name}: the line's text is shown: {out}"
            );
        }
    }

    #[test]
    fn shapes_it_does_not_handle_are_left_to_the_full_parse() {
        for text in [
            "[qlik]\n",                         // no entry
            "[jobs]\nname = \"a\"\n[[jobs]]\n", // jobs as a plain table
            "[jobs.x]\na = 1\n[[jobs]]\n",      // a part before any entry
            "[\"jobs\"]\n[[jobs]]\n",           // quoted key
            "[[jobs]]\na = [\n",                // unbalanced
            "[[jobs]\n",                        // malformed header
            "[[jobs]]\n[qlik\n",                // malformed header
            "[[jobs]]\n]\n",                    // stray bracket
        ] {
            assert_eq!(split(text), None, "{text:?}");
        }
    }
}
