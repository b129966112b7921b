//! Removes the one chunk OpenAI sends only because the gateway asked for usage on the client's
//! behalf (`"choices":[]` with a `usage` object), so the client sees the stream it asked for.
//!
//! Every other byte passes unchanged, as soon as the event it belongs to is complete. The
//! filter reads events with a byte scanner, not a JSON parser: with `include_usage` on, every
//! chunk of the stream carries `"usage":null`, so a cheap test for the word `usage` rejects
//! nothing and each event would be parsed whole.

use std::borrow::Cow;

use crate::jsonscan;

/// Longest event held back until its end. The usage-only chunk is a few hundred bytes, so a
/// longer event cannot be it: its bytes pass on as they arrive instead of waiting for its end,
/// and the filter never holds more than this.
const MAX_HELD: usize = 64 * 1024;

/// The stream filter for one response body.
#[derive(Default)]
pub struct UsageChunkFilter {
    /// The start of the current event, kept until its end shows whether it is the usage chunk.
    held: Vec<u8>,
    blank: BlankLine,
    /// The current event outgrew [`MAX_HELD`]: the rest of it passes as it arrives.
    passing: bool,
}

impl UsageChunkFilter {
    /// Returns the bytes to send now; an incomplete trailing event waits for the next chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.held.len() + chunk.len());
        let mut from = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if !self.blank.ends_event(b) {
                continue;
            }
            let tail = &chunk[from..=i];
            if self.passing {
                out.extend_from_slice(tail);
                self.passing = false;
            } else if self.held.is_empty() {
                if !is_usage_only(tail) {
                    out.extend_from_slice(tail);
                }
            } else {
                self.held.extend_from_slice(tail);
                if !is_usage_only(&self.held) {
                    out.extend_from_slice(&self.held);
                }
                self.held.clear();
            }
            from = i + 1;
        }
        let rest = &chunk[from..];
        if self.passing {
            out.extend_from_slice(rest);
        } else {
            self.held.extend_from_slice(rest);
            if self.held.len() > MAX_HELD {
                out.append(&mut self.held);
                self.passing = true;
            }
        }
        out
    }

    /// Whatever is left when the stream ends.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// Finds the blank line that ends an SSE event, one byte at a time, across chunks: `\n\n`,
/// or `\n\r\n` when lines end in `\r\n`.
#[derive(Default, Clone, Copy)]
enum BlankLine {
    #[default]
    InLine,
    AfterNewline,
    AfterNewlineCr,
}

impl BlankLine {
    fn ends_event(&mut self, b: u8) -> bool {
        let (next, ends) = match (*self, b) {
            (Self::AfterNewline | Self::AfterNewlineCr, b'\n') => (Self::InLine, true),
            (_, b'\n') => (Self::AfterNewline, false),
            (Self::AfterNewline, b'\r') => (Self::AfterNewlineCr, false),
            _ => (Self::InLine, false),
        };
        *self = next;
        ends
    }
}

/// The event is one JSON object whose `choices` is an empty array and whose `usage` is an
/// object.
fn is_usage_only(event: &[u8]) -> bool {
    let data = event_data(event);
    let Ok(members) = jsonscan::members(&data) else {
        return false;
    };
    let value = |key| jsonscan::find(&data, &members, key).map(|m| &data[m.value.clone()]);
    let empty_array = |v: &[u8]| {
        v.len() >= 2 && v[0] == b'[' && v[1..v.len() - 1].iter().all(u8::is_ascii_whitespace)
    };
    value("choices").is_some_and(empty_array) && value("usage").is_some_and(|v| v[0] == b'{')
}

/// The event's `data:` lines joined with `\n`, as SSE defines them; borrowed when there is
/// one (the usual case).
fn event_data(event: &[u8]) -> Cow<'_, [u8]> {
    let mut lines = event
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter_map(|l| l.strip_prefix(b"data:"))
        .map(|d| d.strip_prefix(b" ").unwrap_or(d));
    let Some(first) = lines.next() else {
        return Cow::Borrowed(&[]);
    };
    let Some(second) = lines.next() else {
        return Cow::Borrowed(first);
    };
    let mut joined = first.to_vec();
    for line in std::iter::once(second).chain(lines) {
        joined.push(b'\n');
        joined.extend_from_slice(line);
    }
    Cow::Owned(joined)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixture as fixture;

    fn filtered(body: &[u8], chunk: usize) -> Vec<u8> {
        let mut f = UsageChunkFilter::default();
        let mut out = Vec::new();
        for c in body.chunks(chunk) {
            out.extend(f.push(c));
        }
        out.extend(f.finish());
        out
    }

    fn without(body: &[u8], event: &[u8]) -> Vec<u8> {
        let at = body
            .windows(event.len())
            .position(|w| w == event)
            .expect("the event is in the body");
        [&body[..at], &body[at + event.len()..]].concat()
    }

    #[test]
    fn only_the_usage_chunk_is_removed_at_every_chunking() {
        let body = fixture("openai-chat-stream-usage.sse");
        let text = String::from_utf8(body.clone()).unwrap();
        let usage_event = text
            .split_inclusive("\n\n")
            .find(|e| e.contains("\"choices\":[]"))
            .unwrap();
        let want = without(&body, usage_event.as_bytes());
        for chunk in [1, 2, 3, 5, 100, body.len()] {
            assert_eq!(filtered(&body, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn crlf_line_ends_are_understood() {
        let body = String::from_utf8(fixture("openai-chat-stream-usage.sse"))
            .unwrap()
            .replace('\n', "\r\n");
        let usage_event = body
            .split_inclusive("\r\n\r\n")
            .find(|e| e.contains("\"choices\":[]"))
            .unwrap();
        let want = without(body.as_bytes(), usage_event.as_bytes());
        for chunk in [1, 2, 7, body.len()] {
            assert_eq!(filtered(body.as_bytes(), chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn a_usage_chunk_written_differently_is_still_found() {
        let spaced = b"data: { \"choices\" : [ \t ] , \"usage\" : {\"total_tokens\": 3} }\n\n";
        let split = b"data: {\"choices\":[],\ndata: \"usage\":{}}\n\n";
        let no_space = b"data:{\"usage\":{},\"choices\":[]}\n\n";
        for event in [&spaced[..], split, no_space] {
            let body = [b"data: {\"choices\":[1]}\n\n", event, b"data: [DONE]\n\n"].concat();
            assert_eq!(
                filtered(&body, 4),
                b"data: {\"choices\":[1]}\n\ndata: [DONE]\n\n",
                "{}",
                String::from_utf8_lossy(event)
            );
        }
    }

    #[test]
    fn events_that_only_look_alike_pass_unchanged() {
        let body: &[u8] = b"data: {\"choices\":[],\"usage\":null}\n\n\
            data: {\"choices\":[{}],\"usage\":{}}\n\n\
            data: {\"choices\":\"[]\",\"usage\":{}}\n\n\
            data: {\"choices\":[],\"usage\":{}\n\n\
            data: [{\"choices\":[],\"usage\":{}}]\n\n\
            event: ping\n\n\
            : comment\n\n\
            data: \xff\xfe\n\n\
            data: [DONE]\n\n";
        for chunk in [1, 3, body.len()] {
            assert_eq!(filtered(body, chunk), body, "chunk {chunk}");
        }
    }

    #[test]
    fn an_unfinished_last_event_is_passed_on_at_the_end() {
        let body = b"data: {\"choices\":[{}]}\n\ndata: {\"choi";
        let mut f = UsageChunkFilter::default();
        assert_eq!(f.push(body), b"data: {\"choices\":[{}]}\n\n");
        assert_eq!(f.finish(), b"data: {\"choi");
    }

    #[test]
    fn a_huge_event_flows_on_without_waiting_for_its_end() {
        let mut f = UsageChunkFilter::default();
        let piece = vec![b'x'; 16 * 1024];
        let mut out = f.push(b"data: ");
        let mut sent = 6;
        for _ in 0..64 {
            out.extend(f.push(&piece));
            sent += piece.len();
            assert!(
                f.held.len() <= MAX_HELD,
                "the filter held {} bytes",
                f.held.len()
            );
        }
        assert!(
            out.len() >= sent - MAX_HELD,
            "{} of {sent} bytes passed on",
            out.len()
        );
        // Its end, split across chunks, then a usage chunk that must still be removed.
        out.extend(f.push(b"\n"));
        out.extend(f.push(b"\ndata: {\"choices\":[],\"usage\":{}}\n\ndata: [DONE]\n\n"));
        out.extend(f.finish());
        let want = [&b"data: "[..], &piece.repeat(64), b"\n\ndata: [DONE]\n\n"].concat();
        assert_eq!(out.len(), want.len());
        assert!(out == want, "the bytes changed");
    }
}
