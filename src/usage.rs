//! Counts tokens in a provider's response while it streams past.
//!
//! The meter sees a copy of every chunk the client receives. It decodes gzip when the
//! provider compressed the body, splits SSE events or NDJSON lines, and reads usage from
//! whichever shape the provider uses: OpenAI chat (`usage.prompt_tokens`), the Responses API
//! (`response.completed` → `response.usage`), Anthropic (`message_start` + `message_delta`),
//! Ollama (`prompt_eval_count` / `eval_count`). It never changes the bytes passed on.
//! When no usage arrives (a provider that sends none, a client that left early), the output
//! is estimated from the text seen and the result is marked estimated.

use std::io::Write;

use crate::usage_event::Event;

/// Token counts of one exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Json,
    Sse,
    Ndjson,
    Other,
}

impl Framing {
    /// From the response's `Content-Type`.
    pub fn from_content_type(ct: Option<&str>) -> Self {
        let ct = ct.unwrap_or("").to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Self::Sse
        } else if ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl") {
            Self::Ndjson
        } else if ct.starts_with("application/json") || ct.contains("+json") {
            Self::Json
        } else {
            Self::Other
        }
    }
}

/// What the meter learned once the body ended (or the client left).
#[derive(Debug, Default)]
pub struct Measured {
    /// Input tokens, when the provider reported them.
    pub input: Option<u64>,
    /// Output tokens, when the provider reported them.
    pub output: Option<u64>,
    /// Estimated output tokens from the text seen (about four bytes per token).
    pub output_estimate: u64,
    /// The decoded body, up to the capture limit.
    pub transcript: Vec<u8>,
    /// The transcript was cut at the capture limit.
    pub truncated: bool,
}

#[derive(Default)]
struct Partial {
    input: Option<u64>,
    output: Option<u64>,
}

/// Streaming token meter for one response body.
pub struct UsageMeter {
    framing: Framing,
    gunzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    gzip_failed: bool,
    line: Vec<u8>,
    event: Vec<u8>,
    usage: Partial,
    text_bytes: u64,
    capture: Vec<u8>,
    capture_limit: usize,
    truncated: bool,
}

/// Longest single SSE event or NDJSON line the meter buffers; longer ones are skipped.
const MAX_EVENT: usize = 4 * 1024 * 1024;

impl UsageMeter {
    /// `gzip`: the body is gzip-encoded on the wire. `capture_limit`: how much of the decoded
    /// body to keep for the transcript (0 keeps nothing).
    pub fn new(framing: Framing, gzip: bool, capture_limit: usize) -> Self {
        Self {
            framing,
            gunzip: gzip.then(|| flate2::write::GzDecoder::new(Vec::new())),
            gzip_failed: false,
            line: Vec::new(),
            event: Vec::new(),
            usage: Partial::default(),
            text_bytes: 0,
            capture: Vec::new(),
            capture_limit,
            truncated: false,
        }
    }

    /// Feeds the next chunk exactly as it went to the client.
    pub fn feed(&mut self, wire: &[u8]) {
        let Some(dec) = self.gunzip.as_mut() else {
            self.decoded(wire);
            return;
        };
        if self.gzip_failed {
            return;
        }
        if dec.write_all(wire).is_err() {
            self.gzip_failed = true;
            return;
        }
        let decoded = std::mem::take(dec.get_mut());
        self.decoded(&decoded);
        if let Some(dec) = self.gunzip.as_mut() {
            *dec.get_mut() = reuse(decoded);
        }
    }

    fn decoded(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let room = self.capture_limit.saturating_sub(self.capture.len());
        if room < bytes.len() {
            self.truncated = self.capture_limit > 0 || self.truncated;
        }
        self.capture
            .extend_from_slice(&bytes[..room.min(bytes.len())]);
        match self.framing {
            Framing::Sse | Framing::Ndjson => self.lines(bytes),
            Framing::Json | Framing::Other => {}
        }
    }

    fn lines(&mut self, mut bytes: &[u8]) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            if self.line.len() < MAX_EVENT {
                self.line.extend_from_slice(&bytes[..nl]);
            }
            bytes = &bytes[nl + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line_done(&line);
            line.clear();
            self.line = line;
        }
        if self.line.len() < MAX_EVENT {
            self.line.extend_from_slice(bytes);
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        match self.framing {
            Framing::Ndjson if !line.is_empty() => self.json_event(line),
            Framing::Sse => {
                if line.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    if !event.is_empty() && event != b"[DONE]" {
                        self.json_event(&event);
                    }
                    self.event = event;
                    self.event.clear();
                } else if let Some(data) = line.strip_prefix(b"data:") {
                    let data = data.strip_prefix(b" ").unwrap_or(data);
                    if !self.event.is_empty() {
                        self.event.push(b'\n');
                    }
                    if self.event.len() + data.len() <= MAX_EVENT {
                        self.event.extend_from_slice(data);
                    }
                }
            }
            _ => {}
        }
    }

    fn json_event(&mut self, data: &[u8]) {
        if let Some(event) = Event::read(data) {
            event.apply(&mut self.usage.input, &mut self.usage.output);
            self.text_bytes += event.text;
        }
    }

    /// Ends metering: the body is complete, or the client or provider went away.
    pub fn finish(mut self) -> Measured {
        if let Some(dec) = self.gunzip.take()
            && !self.gzip_failed
            && let Ok(rest) = dec.finish()
        {
            self.decoded(&rest);
        }
        match self.framing {
            Framing::Sse => {
                // A stream cut mid-event still counts what the last complete lines carried.
                if !self.line.is_empty() {
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line);
                }
                self.line_done(b"");
            }
            Framing::Ndjson if !self.line.is_empty() => {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line);
            }
            Framing::Json => {
                let capture = std::mem::take(&mut self.capture);
                self.json_event(&capture);
                self.capture = capture;
            }
            _ => {}
        }
        Measured {
            input: self.usage.input,
            output: self.usage.output,
            output_estimate: self.text_bytes.div_ceil(4),
            transcript: self.capture,
            truncated: self.truncated,
        }
    }
}

fn reuse(mut buf: Vec<u8>) -> Vec<u8> {
    buf.clear();
    buf
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::test_fixture as fixture;

    fn meter_in_chunks(framing: Framing, body: &[u8], chunk: usize, gzip: bool) -> Measured {
        let wire = if gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(body).unwrap();
            enc.finish().unwrap()
        } else {
            body.to_vec()
        };
        let mut m = UsageMeter::new(framing, gzip, 1 << 20);
        for c in wire.chunks(chunk) {
            m.feed(c);
        }
        m.finish()
    }

    #[test]
    fn reads_every_provider_shape_at_every_chunking() {
        let cases = [
            ("openai-chat.json", Framing::Json),
            ("openai-chat-tool-calls.json", Framing::Json),
            ("openai-chat-stream-usage.sse", Framing::Sse),
            ("openai-chat-stream-tool-calls.sse", Framing::Sse),
            ("openai-chat-stream-parallel-tool-calls.sse", Framing::Sse),
            ("openai-responses-stream.sse", Framing::Sse),
            ("openai-responses-stream-tool-call.sse", Framing::Sse),
            ("anthropic-messages.json", Framing::Json),
            ("anthropic-messages-tool-use.json", Framing::Json),
            ("anthropic-messages-stream.sse", Framing::Sse),
            ("anthropic-messages-stream-tool-use.sse", Framing::Sse),
            ("anthropic-messages-stream-thinking.sse", Framing::Sse),
            ("ollama-api-chat-stream.ndjson", Framing::Ndjson),
            ("ollama-api-chat.json", Framing::Json),
            ("ollama-openai-chat.json", Framing::Json),
        ];
        for (name, framing) in cases {
            let body = fixture(name);
            let whole = meter_in_chunks(framing, &body, body.len(), false);
            assert!(
                whole.input.is_some() && whole.output.is_some(),
                "{name}: {whole:?}"
            );
            assert_eq!(whole.transcript, body, "{name}");
            for chunk in [1, 7, 64] {
                for gzip in [false, true] {
                    let m = meter_in_chunks(framing, &body, chunk, gzip);
                    assert_eq!(
                        (m.input, m.output),
                        (whole.input, whole.output),
                        "{name} chunk {chunk} gzip {gzip}"
                    );
                    assert_eq!(m.transcript, body, "{name} chunk {chunk} gzip {gzip}");
                }
            }
        }
    }

    #[test]
    fn known_counts_from_the_recordings() {
        let m = meter_in_chunks(Framing::Json, &fixture("openai-chat.json"), 50, false);
        let v: Value = serde_json::from_slice(&fixture("openai-chat.json")).unwrap();
        assert_eq!(m.input, v["usage"]["prompt_tokens"].as_u64());
        assert_eq!(m.output, v["usage"]["completion_tokens"].as_u64());

        // Anthropic: input from message_start, final output from message_delta.
        let m = meter_in_chunks(
            Framing::Sse,
            &fixture("anthropic-messages-stream-tool-use.sse"),
            33,
            false,
        );
        let body = String::from_utf8(fixture("anthropic-messages-stream-tool-use.sse")).unwrap();
        let delta = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .find(|l| l.contains("message_delta"))
            .unwrap();
        let dv: Value = serde_json::from_str(delta).unwrap();
        assert_eq!(m.output, dv["usage"]["output_tokens"].as_u64());

        // Ollama native: the done line.
        let m = meter_in_chunks(
            Framing::Ndjson,
            &fixture("ollama-api-chat-stream.ndjson"),
            100,
            false,
        );
        let last = String::from_utf8(fixture("ollama-api-chat-stream.ndjson")).unwrap();
        let done: Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
        assert_eq!(m.input, done["prompt_eval_count"].as_u64());
        assert_eq!(m.output, done["eval_count"].as_u64());
    }

    #[test]
    fn no_usage_means_an_estimate_from_text() {
        let m = meter_in_chunks(Framing::Sse, &fixture("openai-chat-stream.sse"), 10, false);
        assert_eq!((m.input, m.output), (None, None));
        assert!(m.output_estimate > 0);
    }

    #[test]
    fn a_stream_cut_short_counts_what_arrived() {
        let body = fixture("anthropic-messages-stream.sse");
        let cut = &body[..body.len() / 2];
        let m = meter_in_chunks(Framing::Sse, cut, 17, false);
        assert!(m.input.is_some(), "message_start carried input tokens");
        assert!(m.output_estimate > 0 || m.output.is_some());
    }

    #[test]
    fn broken_input_is_survivable() {
        for junk in [
            &b"data: {not json\n\n"[..],
            b"\xff\xfe\n\n",
            b"data: [DONE]\n\n",
            b"",
        ] {
            let m = meter_in_chunks(Framing::Sse, junk, 3, false);
            assert_eq!((m.input, m.output), (None, None));
        }
        let mut m = UsageMeter::new(Framing::Json, true, 100);
        m.feed(b"this is not gzip at all");
        let r = m.finish();
        assert_eq!((r.input, r.output), (None, None));
    }

    #[test]
    fn capture_stops_at_the_limit() {
        let body = fixture("openai-chat-stream.sse");
        let mut m = UsageMeter::new(Framing::Sse, false, 100);
        m.feed(&body);
        let r = m.finish();
        assert_eq!(r.transcript.len(), 100);
        assert!(r.truncated);
    }
}
