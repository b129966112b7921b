//! Finds and replaces top-level members of a JSON object without re-serialising it.
//!
//! The gateway must change one number (`max_tokens`) or add one member (`stream_options`)
//! in a request body and leave every other byte as the agent sent it: key order, spacing
//! and number formatting included. Parsing to a `Value` and printing it back would not.

use std::ops::Range;

/// One top-level member: where its key and value sit in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The key as written, without quotes (escapes are not decoded).
    pub key: Range<usize>,
    /// The value, from its first byte to its last.
    pub value: Range<usize>,
}

/// Why the body is not a JSON object this scanner can edit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("request body is not a JSON object")]
    NotObject,
    #[error("request body is not valid JSON (near byte {0})")]
    Syntax(usize),
    #[error("request body nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

const MAX_DEPTH: usize = 128;

/// The top-level members of `input`, which must be one JSON object (with optional whitespace).
pub fn members(input: &[u8]) -> Result<Vec<Member>, ScanError> {
    let mut s = Scanner { b: input, i: 0 };
    s.ws();
    if s.peek() != Some(b'{') {
        return Err(ScanError::NotObject);
    }
    s.i += 1;
    let mut out = Vec::new();
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            s.ws();
            let key = s.string()?;
            s.ws();
            s.expect(b':')?;
            s.ws();
            let start = s.i;
            s.value(0)?;
            out.push(Member {
                key: key.start + 1..key.end - 1,
                value: start..s.i,
            });
            s.ws();
            match s.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(ScanError::Syntax(s.i)),
            }
        }
    }
    s.ws();
    if s.i != input.len() {
        return Err(ScanError::Syntax(s.i));
    }
    Ok(out)
}

/// Looks a key up among scanned members.
pub fn find<'m>(input: &[u8], members: &'m [Member], key: &str) -> Option<&'m Member> {
    members
        .iter()
        .find(|m| &input[m.key.clone()] == key.as_bytes())
}

/// Replaces the value of `key` with `new_value`, or inserts `"key":new_value` as the first
/// member when absent. `new_value` must itself be valid JSON.
pub fn set(input: &[u8], members: &[Member], key: &str, new_value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + key.len() + new_value.len() + 4);
    match find(input, members, key) {
        Some(m) => {
            out.extend_from_slice(&input[..m.value.start]);
            out.extend_from_slice(new_value.as_bytes());
            out.extend_from_slice(&input[m.value.end..]);
        }
        None => {
            let brace = input
                .iter()
                .position(|&b| b == b'{')
                .expect("members() checked the body is an object");
            out.extend_from_slice(&input[..=brace]);
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(new_value.as_bytes());
            if !members.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(&input[brace + 1..]);
        }
    }
    out
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), ScanError> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(ScanError::Syntax(self.i - 1))
        }
    }

    /// A string including its quotes; returns its range.
    fn string(&mut self) -> Result<Range<usize>, ScanError> {
        let start = self.i;
        self.expect(b'"')?;
        loop {
            match self.next() {
                Some(b'"') => return Ok(start..self.i),
                Some(b'\\') => {
                    self.next().ok_or(ScanError::Syntax(self.i))?;
                }
                Some(c) if c < 0x20 => return Err(ScanError::Syntax(self.i - 1)),
                Some(_) => {}
                None => return Err(ScanError::Syntax(self.i)),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), ScanError> {
        if depth > MAX_DEPTH {
            return Err(ScanError::TooDeep);
        }
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.value(depth + 1)?;
                    self.ws();
                    match self.next() {
                        Some(b',') => continue,
                        Some(b'}') => return Ok(()),
                        _ => return Err(ScanError::Syntax(self.i - 1)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.value(depth + 1)?;
                    self.ws();
                    match self.next() {
                        Some(b',') => continue,
                        Some(b']') => return Ok(()),
                        _ => return Err(ScanError::Syntax(self.i - 1)),
                    }
                }
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                std::str::from_utf8(&self.b[start..self.i])
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .map(|_| ())
                    .ok_or(ScanError::Syntax(start))
            }
            _ => Err(ScanError::Syntax(self.i)),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ScanError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(ScanError::Syntax(self.i))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_one_value_and_keeps_every_other_byte() {
        let body = br#"{ "model" : "gpt-4o",  "max_tokens":  4000 , "messages":[{"role":"user","content":"a \"quoted\" }"}] }"#;
        let m = members(body).unwrap();
        assert_eq!(m.len(), 3);
        let out = set(body, &m, "max_tokens", "100");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "model" : "gpt-4o",  "max_tokens":  100 , "messages":[{"role":"user","content":"a \"quoted\" }"}] }"#
        );
    }

    #[test]
    fn inserts_when_absent() {
        let body = br#"{"model":"x"}"#;
        let out = set(body, &members(body).unwrap(), "max_tokens", "5");
        assert_eq!(out, br#"{"max_tokens":5,"model":"x"}"#);
        let empty = b" {} ";
        let out = set(empty, &members(empty).unwrap(), "a", "true");
        assert_eq!(out, br#" {"a":true} "#);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["a"], true);
    }

    #[test]
    fn refuses_what_is_not_one_object() {
        for bad in [
            &b""[..],
            b"[]",
            b"\"x\"",
            b"{",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{\"a\":1} x",
            b"{\"a\":tru}",
            b"{\"a\":\"\x01\"}",
            b"{\"a\":-}",
            b"{\"a\":[1,]}",
            b"{\"a\":\"unterminated}",
        ] {
            assert!(members(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(members(deep.as_bytes()).unwrap_err(), ScanError::TooDeep);
    }

    #[test]
    fn agrees_with_serde_on_the_fixtures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let entries = std::fs::read_dir(&dir).unwrap();
        let mut seen = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".request.json") {
                continue;
            }
            let body = std::fs::read(e.path()).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let m = members(&body).unwrap();
            assert_eq!(m.len(), v.as_object().unwrap().len(), "{name}");
            for mem in &m {
                let key = std::str::from_utf8(&body[mem.key.clone()]).unwrap();
                let val: serde_json::Value =
                    serde_json::from_slice(&body[mem.value.clone()]).unwrap();
                assert_eq!(v[key], val, "{name} {key}");
            }
            seen += 1;
        }
        assert!(seen >= 10, "fixtures not found in {}", dir.display());
    }
}
