//! What one JSON event of a response says about tokens, read in one pass.
//!
//! The meter reads every SSE event and NDJSON line of a stream. Parsing each into a
//! `serde_json::Value` allocated a map and a string per member only to look at a few of them:
//! in a profile of streamed requests through the gateway that was a seventh of its CPU. This
//! walks the document with serde's visitors instead, keeping only the numbers the meter reads
//! and the length of the generated text; strings are borrowed from the input where they can be.
//!
//! Usage is read where providers put it: `usage` (OpenAI chat), `message.usage` (Anthropic's
//! `message_start`), `response.usage` (the Responses API), and top-level `prompt_eval_count` /
//! `eval_count` (Ollama). Text is the length of the string values of [`TEXT_KEYS`] at any
//! depth up to [`MAX_TEXT_DEPTH`].

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Members whose string values are generated text: message content, deltas, tool arguments.
const TEXT_KEYS: [&str; 7] = [
    "content",
    "text",
    "delta",
    "partial_json",
    "arguments",
    "thinking",
    "response",
];

/// Deeper containers are parsed but their text is not counted.
const MAX_TEXT_DEPTH: usize = 8;

/// The token counts of one usage object, as the provider named them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    prompt_tokens: Option<u64>,
    input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl Counts {
    /// Input tokens: Anthropic reports cache reads and writes apart from `input_tokens`, and
    /// they are billed.
    fn input(&self) -> Option<u64> {
        let base = self.prompt_tokens.or(self.input_tokens)?;
        Some(
            base.saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
                .saturating_add(self.cache_read_input_tokens.unwrap_or(0)),
        )
    }

    fn output(&self) -> Option<u64> {
        self.completion_tokens.or(self.output_tokens)
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<u64>> {
        Some(match key {
            "prompt_tokens" => &mut self.prompt_tokens,
            "input_tokens" => &mut self.input_tokens,
            "cache_creation_input_tokens" => &mut self.cache_creation_input_tokens,
            "cache_read_input_tokens" => &mut self.cache_read_input_tokens,
            "completion_tokens" => &mut self.completion_tokens,
            "output_tokens" => &mut self.output_tokens,
            _ => return None,
        })
    }
}

/// Where usage can sit in an event, in the order a later one overrides an earlier one.
const USAGE: usize = 0;
const MESSAGE_USAGE: usize = 1;
const RESPONSE_USAGE: usize = 2;

/// What one event says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// `usage`, `message.usage`, `response.usage`, when each is an object.
    usage: [Option<Counts>; 3],
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    /// Bytes of generated text.
    pub text: u64,
}

impl Event {
    /// Overrides `input` and `output` with what this event reports; a later place in
    /// [`Event::usage`] wins over an earlier one, and Ollama's counts over both.
    pub fn apply(&self, input: &mut Option<u64>, output: &mut Option<u64>) {
        for counts in self.usage.iter().flatten() {
            if let Some(n) = counts.input() {
                *input = Some(n);
            }
            if let Some(n) = counts.output() {
                *output = Some(n);
            }
        }
        if let Some(n) = self.prompt_eval_count {
            *input = Some(n);
        }
        if let Some(n) = self.eval_count {
            *output = Some(n);
        }
    }

    /// Reads one JSON document; `None` when it is not valid JSON.
    pub fn read(json: &[u8]) -> Option<Self> {
        let mut event = Self::default();
        let mut de = serde_json::Deserializer::from_slice(json);
        Node {
            event: &mut event,
            depth: 0,
            role: Role::Top,
        }
        .deserialize(&mut de)
        .ok()?;
        de.end().ok()?;
        Some(event)
    }
}

/// What a node's position means for usage.
#[derive(Clone, Copy)]
enum Role {
    /// The document itself.
    Top,
    /// `message` or `response` at the top: its `usage` goes to this slot.
    Holder(usize),
    /// A usage object, read into this slot.
    Usage(usize),
    Plain,
}

/// What a value turned out to be, as far as its parent cares.
enum Seen {
    Uint(u64),
    Str(usize),
    Object,
    Other,
}

/// One value of the document at `depth` (the document is 0, its members' values 1).
struct Node<'e> {
    event: &'e mut Event,
    depth: usize,
    role: Role,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Seen;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Seen, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Seen;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_u64<E>(self, v: u64) -> Result<Seen, E> {
        Ok(Seen::Uint(v))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Seen, E> {
        Ok(Seen::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Seen, E> {
        Ok(Seen::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Seen, E> {
        Ok(Seen::Other)
    }

    fn visit_unit<E>(self) -> Result<Seen, E> {
        Ok(Seen::Other)
    }

    fn visit_str<E>(self, v: &str) -> Result<Seen, E> {
        Ok(Seen::Str(v.len()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seen, A::Error> {
        if self.depth > MAX_TEXT_DEPTH {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Seen::Other);
        }
        // Strings in arrays are not text; objects in them are searched.
        while seq
            .next_element_seed(Node {
                event: &mut *self.event,
                depth: self.depth + 1,
                role: Role::Plain,
            })?
            .is_some()
        {}
        Ok(Seen::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen, A::Error> {
        if self.depth > MAX_TEXT_DEPTH {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Seen::Object);
        }
        let mut counts = Counts::default();
        match self.role {
            // A repeated key counts once, as its last value (as a parsed map keeps it).
            Role::Holder(slot) => self.event.usage[slot] = None,
            Role::Top | Role::Usage(_) | Role::Plain => {}
        }
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let role = match (self.role, key.as_str()) {
                (Role::Top, "usage") => Role::Usage(USAGE),
                (Role::Top, "message") => Role::Holder(MESSAGE_USAGE),
                (Role::Top, "response") => Role::Holder(RESPONSE_USAGE),
                (Role::Holder(slot), "usage") => Role::Usage(slot),
                _ => Role::Plain,
            };
            let seen = map.next_value_seed(Node {
                event: &mut *self.event,
                depth: self.depth + 1,
                role,
            })?;
            if let Seen::Str(len) = seen
                && TEXT_KEYS.contains(&key.as_str())
            {
                self.event.text += len as u64;
            }
            let number = match seen {
                Seen::Uint(n) => Some(n),
                _ => None,
            };
            match (self.role, role) {
                (_, Role::Usage(slot) | Role::Holder(slot)) if !matches!(seen, Seen::Object) => {
                    self.event.usage[slot] = None;
                }
                (Role::Top, _) if key.as_str() == "prompt_eval_count" => {
                    self.event.prompt_eval_count = number;
                }
                (Role::Top, _) if key.as_str() == "eval_count" => self.event.eval_count = number,
                (Role::Usage(_), _) => {
                    if let Some(slot) = counts.slot(key.as_str()) {
                        *slot = number;
                    }
                }
                _ => {}
            }
        }
        if let Role::Usage(slot) = self.role {
            self.event.usage[slot] = Some(counts);
        }
        Ok(Seen::Object)
    }
}

/// An object key, borrowed from the input unless it had escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl Key<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(v.into()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(v.to_owned().into()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// The meter's earlier reading of an event, through a parsed `Value`: the one-pass reader
    /// must agree with it everywhere.
    mod reference {
        use serde_json::Value;

        fn num(v: &Value, key: &str) -> Option<u64> {
            v.get(key).and_then(Value::as_u64)
        }

        pub fn usage(v: &Value) -> (Option<u64>, Option<u64>) {
            let (mut input, mut output) = (None, None);
            for u in [
                v.get("usage"),
                v.pointer("/message/usage"),
                v.pointer("/response/usage"),
            ]
            .into_iter()
            .flatten()
            {
                if !u.is_object() {
                    continue;
                }
                if let Some(base) = num(u, "prompt_tokens").or_else(|| num(u, "input_tokens")) {
                    let cache = num(u, "cache_creation_input_tokens").unwrap_or(0)
                        + num(u, "cache_read_input_tokens").unwrap_or(0);
                    input = Some(base + cache);
                }
                if let Some(out) = num(u, "completion_tokens").or_else(|| num(u, "output_tokens")) {
                    output = Some(out);
                }
            }
            if let Some(n) = num(v, "prompt_eval_count") {
                input = Some(n);
            }
            if let Some(n) = num(v, "eval_count") {
                output = Some(n);
            }
            (input, output)
        }

        pub fn text_len(v: &Value, depth: usize) -> u64 {
            if depth > 8 {
                return 0;
            }
            match v {
                Value::Object(map) => map
                    .iter()
                    .map(|(k, val)| match (k.as_str(), val) {
                        (
                            "content" | "text" | "delta" | "partial_json" | "arguments"
                            | "thinking" | "response",
                            Value::String(s),
                        ) => s.len() as u64,
                        (_, Value::Object(_) | Value::Array(_)) => text_len(val, depth + 1),
                        _ => 0,
                    })
                    .sum(),
                Value::Array(items) => items.iter().map(|i| text_len(i, depth + 1)).sum(),
                _ => 0,
            }
        }
    }

    /// (input, output) tokens and text bytes.
    type Reading = ((Option<u64>, Option<u64>), u64);

    fn read(json: &str) -> Option<Reading> {
        let event = Event::read(json.as_bytes())?;
        let (mut input, mut output) = (None, None);
        event.apply(&mut input, &mut output);
        Some(((input, output), event.text))
    }

    fn agrees(json: &str) {
        let expected = serde_json::from_str::<Value>(json)
            .ok()
            .map(|v| (reference::usage(&v), reference::text_len(&v, 0)));
        assert_eq!(read(json), expected, "{json}");
    }

    /// Every JSON document in the recorded fixtures: whole bodies, SSE data, NDJSON lines.
    fn fixture_documents() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut docs = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => docs.push(text),
                Some("ndjson") => docs.extend(text.lines().map(str::to_owned)),
                Some("sse") => docs.extend(
                    text.lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(|d| d.trim_start().to_owned()),
                ),
                _ => {}
            }
        }
        docs
    }

    #[test]
    fn agrees_with_a_parsed_value_on_every_recorded_event() {
        let docs = fixture_documents();
        assert!(docs.len() > 100, "only {} documents", docs.len());
        let mut with_usage = 0;
        for doc in &docs {
            agrees(doc);
            with_usage += usize::from(read(doc).is_some_and(|(u, _)| u != (None, None)));
        }
        assert!(with_usage >= 10, "{with_usage} documents carried usage");
    }

    #[test]
    fn reads_each_place_usage_can_be() {
        assert_eq!(
            read(r#"{"usage":{"prompt_tokens":7,"completion_tokens":3}}"#),
            Some(((Some(7), Some(3)), 0))
        );
        assert_eq!(
            read(
                r#"{"type":"message_start","message":{"content":[],"usage":{"input_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":1}}}"#
            ),
            Some(((Some(125), Some(1)), 0))
        );
        assert_eq!(
            read(r#"{"response":{"usage":{"input_tokens":9,"output_tokens":4}}}"#),
            Some(((Some(9), Some(4)), 0))
        );
        assert_eq!(
            read(r#"{"message":{"content":"hi"},"prompt_eval_count":26,"eval_count":11}"#),
            Some(((Some(26), Some(11)), 2))
        );
    }

    #[test]
    fn agrees_on_odd_and_hostile_shapes() {
        for doc in [
            // Usage in the wrong shape, or repeated: the last one counts, a non-object none.
            r#"{"usage":5}"#,
            r#"{"usage":null,"message":"x","response":[1]}"#,
            r#"{"usage":{"prompt_tokens":1},"usage":{"completion_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":1},"usage":"gone"}"#,
            r#"{"message":{"usage":{"input_tokens":3}},"message":{"role":"x"}}"#,
            r#"{"usage":{"prompt_tokens":4,"prompt_tokens":"four"}}"#,
            // Numbers no counter can hold, negative or fractional.
            r#"{"usage":{"prompt_tokens":-1,"completion_tokens":1.5}}"#,
            r#"{"usage":{"prompt_tokens":18446744073709551616}}"#,
            r#"{"usage":{"prompt_tokens":18446744073709551615}}"#,
            r#"{"prompt_eval_count":true,"eval_count":"7"}"#,
            // Usage nested too deep or under another name is not usage.
            r#"{"choices":[{"usage":{"prompt_tokens":1}}]}"#,
            r#"{"data":{"message":{"usage":{"input_tokens":1}}}}"#,
            // Text: escapes are counted decoded, arrays of strings are not text, depth ends.
            r#"{"choices":[{"delta":{"content":"caf\u00e9 \"quoted\"\n"}}]}"#,
            r#"{"content":["a","b"],"text":{"text":"inner"},"delta":null}"#,
            r#"{"arguments":"{\"x\":1}","partial_json":"{","thinking":"hm","response":"ok"}"#,
            r#"{"k\u0065y":1,"t\u0065xt":"escaped key"}"#,
            r#"[{"text":"top-level array"},"not text"]"#,
            r#""just a string""#,
            "42",
            "null",
            // Not JSON at all, or not only JSON: nothing is read.
            "",
            "{",
            r#"{"usage":{"prompt_tokens":1}"#,
            r#"{"usage":{"prompt_tokens":1}} trailing"#,
            r#"{"text":"\ud800"}"#,
            "{\"text\":\"\u{0}\"}",
            &"[".repeat(200),
        ] {
            agrees(doc);
        }
    }

    #[test]
    fn text_is_counted_down_to_the_same_depth() {
        let mut counted = Vec::new();
        for depth in 0..12 {
            // The text member sits in an object nested `depth` objects and arrays deep.
            let mut doc = r#"{"text":"abc"}"#.to_owned();
            for level in 0..depth {
                doc = if level % 2 == 0 {
                    format!(r#"{{"a":{doc}}}"#)
                } else {
                    format!("[{doc}]")
                };
            }
            agrees(&doc);
            counted.push(read(&doc).unwrap().1);
        }
        assert_eq!(counted, [[3; 9].as_slice(), &[0; 3]].concat());
    }

    #[test]
    fn cache_counts_that_would_overflow_saturate() {
        let doc = format!(
            r#"{{"usage":{{"input_tokens":{m},"cache_read_input_tokens":{m}}}}}"#,
            m = u64::MAX
        );
        assert_eq!(read(&doc), Some(((Some(u64::MAX), None), 0)));
    }
}
