//! Dotenv files: `import` reads them, `export --plaintext` writes them.
//!
//! Accepted syntax, one assignment per line:
//!
//! ```text
//! # comment               blank lines are fine too
//! NAME=value              unquoted: trimmed; ` #` starts a comment
//! export NAME=value       an `export ` prefix is allowed
//! NAME='literal $value'   single quotes: taken literally, may span lines
//! NAME="a\nb \"q\""       double quotes: \n \r \t \\ \" \$ \` are escapes, may span lines
//! ```
//!
//! No variable expansion happens. A later line wins over an earlier one with the same name.
//! [`render`] writes a file that [`parse`] reads back to exactly the same values.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::format::MAX_VALUE_BYTES;
use crate::fsio;
use crate::names;

/// The largest dotenv file `read_file` accepts.
const MAX_DOTENV_BYTES: u64 = 16 * 1024 * 1024;

/// Reads and parses a dotenv file; nothing is returned unless the whole file is valid.
pub fn read_file(path: &Path) -> Result<Vec<(String, SecretString)>, Error> {
    let bytes = Zeroizing::new(fsio::read_bounded(path, MAX_DOTENV_BYTES)?.ok_or_else(|| {
        Error::io(
            "open",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })?);
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        Error::Dotenv {
            path: path.to_owned(),
            line,
            reason: "not valid UTF-8".into(),
        }
    })?;
    parse(path, text)
}

/// Parses dotenv text; `path` only names the source in errors.
pub fn parse(path: &Path, text: &str) -> Result<Vec<(String, SecretString)>, Error> {
    let mut p = Parser {
        path,
        chars: text.chars().peekable(),
        line: 1,
    };
    let mut out: Vec<(String, SecretString)> = Vec::new();
    while let Some((name, value)) = p.assignment()? {
        out.retain(|(n, _)| *n != name);
        out.push((name, value));
    }
    Ok(out)
}

struct Parser<'a> {
    path: &'a Path,
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
}

impl Parser<'_> {
    fn err(&self, line: usize, reason: impl Into<String>) -> Error {
        Error::Dotenv {
            path: self.path.to_owned(),
            line,
            reason: reason.into(),
        }
    }

    fn skip_blanks(&mut self) {
        while matches!(self.chars.peek(), Some(' ' | '\t')) {
            self.chars.next();
        }
    }

    fn skip_to_line_end(&mut self) {
        while let Some(&c) = self.chars.peek() {
            if c == '\n' {
                break;
            }
            self.chars.next();
        }
    }

    /// Consumes the end of a line (or of the text); after a value only blanks, a comment and
    /// a `\r` may remain.
    fn end_of_line(&mut self, line: usize) -> Result<(), Error> {
        self.skip_blanks();
        match self.chars.peek() {
            Some('#') => self.skip_to_line_end(),
            Some('\r') => {
                self.chars.next();
            }
            _ => {}
        }
        match self.chars.next() {
            None => Ok(()),
            Some('\n') => {
                self.line += 1;
                Ok(())
            }
            Some(_) => Err(self.err(line, "unexpected text after the closing quote")),
        }
    }

    fn word(&mut self) -> String {
        let mut w = String::new();
        while let Some(&c) = self.chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                w.push(c);
                self.chars.next();
            } else {
                break;
            }
        }
        w
    }

    /// The next assignment, or `None` at the end of the text.
    fn assignment(&mut self) -> Result<Option<(String, SecretString)>, Error> {
        loop {
            self.skip_blanks();
            match self.chars.peek() {
                None => return Ok(None),
                Some('\n') => {
                    self.chars.next();
                    self.line += 1;
                }
                Some('\r') => {
                    self.chars.next();
                }
                Some('#') => self.skip_to_line_end(),
                Some(_) => break,
            }
        }
        let line = self.line;
        let mut name = self.word();
        if name == "export" && matches!(self.chars.peek(), Some(' ' | '\t')) {
            self.skip_blanks();
            name = self.word();
        }
        if name.is_empty() {
            return Err(self.err(line, "expected NAME=value"));
        }
        if names::validate(&name).is_err() {
            return Err(self.err(line, format!("`{name}` is not a valid name")));
        }
        self.skip_blanks();
        if self.chars.next() != Some('=') {
            return Err(self.err(line, format!("expected `=` after `{name}`")));
        }
        self.skip_blanks();
        let mut value = Zeroizing::new(String::new());
        match self.chars.peek() {
            Some('\'') => {
                self.chars.next();
                loop {
                    match self.chars.next() {
                        None => return Err(self.err(line, "unterminated single quote")),
                        Some('\'') => break,
                        Some(c) => {
                            if c == '\n' {
                                self.line += 1;
                            }
                            value.push(c);
                        }
                    }
                }
                self.end_of_line(line)?;
            }
            Some('"') => {
                self.chars.next();
                loop {
                    match self.chars.next() {
                        None => return Err(self.err(line, "unterminated double quote")),
                        Some('"') => break,
                        Some('\\') => match self.chars.next() {
                            None => return Err(self.err(line, "unterminated double quote")),
                            Some('n') => value.push('\n'),
                            Some('r') => value.push('\r'),
                            Some('t') => value.push('\t'),
                            Some(c @ ('\\' | '"' | '$' | '`')) => value.push(c),
                            Some(c) => {
                                if c == '\n' {
                                    self.line += 1;
                                }
                                value.push('\\');
                                value.push(c);
                            }
                        },
                        Some(c) => {
                            if c == '\n' {
                                self.line += 1;
                            }
                            value.push(c);
                        }
                    }
                }
                self.end_of_line(line)?;
            }
            _ => {
                let mut prev_blank = true;
                while let Some(&c) = self.chars.peek() {
                    if c == '\n' || (c == '#' && prev_blank) {
                        break;
                    }
                    prev_blank = c == ' ' || c == '\t';
                    value.push(c);
                    self.chars.next();
                }
                let trimmed_len = value.trim_end().len();
                value.truncate(trimmed_len);
                self.skip_to_line_end();
                if self.chars.next().is_some() {
                    self.line += 1;
                }
            }
        }
        if value.len() > MAX_VALUE_BYTES || value.contains('\0') {
            let reason = match names::validate_value(&name, &value) {
                Err(Error::InvalidValue { reason, .. }) => reason,
                _ => "invalid value".into(),
            };
            return Err(self.err(line, format!("the value of `{name}` is invalid: {reason}")));
        }
        let mut exact = String::with_capacity(value.len());
        exact.push_str(&value);
        Ok(Some((name, SecretString::from(exact))))
    }
}

/// Renders entries as dotenv text that [`parse`] reads back exactly: bare when the value is
/// plain, single-quoted when it has no `'` or control characters, else double-quoted with
/// escapes.
pub fn render(entries: &[(String, SecretString)]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    for (name, value) in entries {
        let v = value.expose_secret();
        out.push_str(name);
        out.push('=');
        let plain = |c: char| c.is_ascii_alphanumeric() || "_./:@%+,=-".contains(c);
        if !v.is_empty() && v.chars().all(plain) {
            out.push_str(v);
        } else if !v.contains('\'') && !v.chars().any(char::is_control) {
            out.push('\'');
            out.push_str(v);
            out.push('\'');
        } else {
            out.push('"');
            for c in v.chars() {
                match c {
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\\' | '"' | '$' | '`' => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<(String, String)> {
        parse(Path::new("t.env"), text)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n, v.expose_secret().to_owned()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn syntax() {
        let text = "# top comment\n\nA=plain\nexport B = spaced value  # trailing\nC='single # kept $X'\nD=\"dq \\\"x\\\" \\n \\$HOME \\\\ \\q\"\r\nE=\nF=a#b\nG='multi\nline'\nA=later\n";
        assert_eq!(
            parsed(text),
            pairs(&[
                ("B", "spaced value"),
                ("C", "single # kept $X"),
                ("D", "dq \"x\" \n $HOME \\ \\q"),
                ("E", ""),
                ("F", "a#b"),
                ("G", "multi\nline"),
                ("A", "later"),
            ])
        );
        assert!(parsed("").is_empty());
        assert_eq!(parsed("exportX=1"), pairs(&[("exportX", "1")]));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("A=1\nno equals here\n", 2),
            ("A=1\n\n1BAD=x\n", 3),
            ("A='open\n", 1),
            ("A=\"open\nB=2\n", 1),
            ("A=1\nB='x' junk\n", 2),
            ("A=1\n=x\n", 2),
            ("A-B=1\n", 1),
            ("A=\"x\"\nB=\"a\nb\"\nC=\"x\" y\n", 4),
        ] {
            match parse(Path::new("f.env"), text) {
                Err(Error::Dotenv { line: l, path, .. }) => {
                    assert_eq!((l, path.to_str().unwrap()), (line, "f.env"), "{text:?}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn render_round_trips_exactly() {
        let values = [
            "plain-value_1.2:3@x",
            "",
            "with space",
            "it's",
            "quote\"d",
            "line1\nline2\r\n",
            "tab\there",
            "$HOME `cmd` \\n literal",
            "  padded  ",
            "#hash",
            "ünïcødé ✓",
            "a'b\"c$d\\e",
            "\u{7}bell",
        ];
        let entries: Vec<(String, SecretString)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("K{i}"), SecretString::from(*v)))
            .collect();
        let text = render(&entries);
        let back = parsed(&text);
        let want: Vec<(String, String)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("K{i}"), (*v).to_owned()))
            .collect();
        assert_eq!(back, want);
    }
}
