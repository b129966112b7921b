//! Reading decrypted transcripts: the request bodies agents send and the answers providers
//! return, in the shapes of OpenAI (chat completions, Responses, legacy completions),
//! Anthropic (messages) and Ollama (`/api/chat`, `/api/generate`), whole or streamed (SSE,
//! NDJSON). Streams are reassembled into the final message. Parsing is lenient: unknown
//! fields are skipped, a broken event is skipped, and whatever is not recognised at all is
//! left for the caller to show as it is.

use serde::Serialize;
use serde_json::Value;

/// One piece of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text {
        text: String,
    },
    Thinking {
        text: String,
    },
    Refusal {
        text: String,
    },
    ToolCall {
        name: String,
        arguments: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    ToolResult {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        content: String,
    },
    /// Something not shown as text (an image, a file, audio, an unknown block type).
    Attachment {
        kind: String,
    },
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub parts: Vec<Part>,
}

/// What an agent asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Request {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub stream: bool,
    pub messages: Vec<Message>,
    /// Names of the tools offered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
}

/// Token counts a provider reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
}

/// What the provider answered, reassembled when it was streamed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reply {
    pub streamed: bool,
    /// One per choice (usually one).
    pub messages: Vec<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A stream reached its end marker (`[DONE]`, `message_stop`, `response.completed`,
    /// `"done":true`); always true for a whole JSON answer.
    pub complete: bool,
}

fn text(v: &Value) -> Option<&str> {
    v.as_str()
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Joins the text of a content value: a string, or an array of blocks with `text`.
fn flat_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.get("text").and_then(text).or_else(|| i.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Parts of one content block (any provider's shape).
fn block_parts(b: &Value, out: &mut Vec<Part>) {
    let Some(kind) = b.get("type").and_then(text) else {
        if let Some(s) = b.as_str() {
            out.push(Part::Text { text: s.to_owned() });
        }
        return;
    };
    match kind {
        "text" | "input_text" | "output_text" => out.push(Part::Text {
            text: b.get("text").and_then(text).unwrap_or_default().to_owned(),
        }),
        "refusal" => out.push(Part::Refusal {
            text: b
                .get("refusal")
                .or_else(|| b.get("text"))
                .and_then(text)
                .unwrap_or_default()
                .to_owned(),
        }),
        "thinking" => out.push(Part::Thinking {
            text: b
                .get("thinking")
                .and_then(text)
                .unwrap_or_default()
                .to_owned(),
        }),
        "redacted_thinking" => out.push(Part::Thinking {
            text: "[redacted]".to_owned(),
        }),
        "tool_use" | "server_tool_use" => out.push(Part::ToolCall {
            name: b.get("name").map(compact).unwrap_or_default(),
            arguments: b.get("input").map(compact).unwrap_or_default(),
            id: b.get("id").and_then(text).map(str::to_owned),
        }),
        "tool_result" => out.push(Part::ToolResult {
            id: b.get("tool_use_id").and_then(text).map(str::to_owned),
            content: b.get("content").map(flat_text).unwrap_or_default(),
        }),
        other => out.push(Part::Attachment {
            kind: other.to_owned(),
        }),
    }
}

fn content_parts(content: &Value, out: &mut Vec<Part>) {
    match content {
        Value::String(s) => out.push(Part::Text { text: s.clone() }),
        Value::Array(items) => items.iter().for_each(|b| block_parts(b, out)),
        _ => {}
    }
}

fn openai_tool_calls(calls: &Value, out: &mut Vec<Part>) {
    for c in calls.as_array().into_iter().flatten() {
        let f = &c["function"];
        out.push(Part::ToolCall {
            name: f.get("name").map(compact).unwrap_or_default(),
            arguments: f.get("arguments").map(compact).unwrap_or_default(),
            id: c.get("id").and_then(text).map(str::to_owned),
        });
    }
}

/// A chat message in OpenAI, Anthropic or Ollama shape.
fn chat_message(m: &Value) -> Message {
    let role = m.get("role").and_then(text).unwrap_or("?").to_owned();
    let mut parts = Vec::new();
    for key in ["reasoning_content", "thinking", "reasoning"] {
        if let Some(t) = m.get(key).and_then(text).filter(|t| !t.is_empty()) {
            parts.push(Part::Thinking { text: t.to_owned() });
        }
    }
    let content = m.get("content").unwrap_or(&Value::Null);
    if let Some(id) = m.get("tool_call_id").and_then(text) {
        parts.push(Part::ToolResult {
            id: Some(id.to_owned()),
            content: flat_text(content),
        });
    } else {
        content_parts(content, &mut parts);
    }
    if let Some(r) = m.get("refusal").and_then(text) {
        parts.push(Part::Refusal { text: r.to_owned() });
    }
    if let Some(calls) = m.get("tool_calls") {
        openai_tool_calls(calls, &mut parts);
    }
    if let Some(f) = m.get("function_call").filter(|f| f.is_object()) {
        parts.push(Part::ToolCall {
            name: f.get("name").map(compact).unwrap_or_default(),
            arguments: f.get("arguments").map(compact).unwrap_or_default(),
            id: None,
        });
    }
    for _ in m
        .get("images")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        parts.push(Part::Attachment {
            kind: "image".to_owned(),
        });
    }
    Message { role, parts }
}

/// One item of a Responses API `input` or `output`.
fn responses_item(item: &Value) -> Option<Message> {
    let kind = item.get("type").and_then(text).unwrap_or("message");
    let mut parts = Vec::new();
    let role = match kind {
        "message" => {
            content_parts(item.get("content").unwrap_or(&Value::Null), &mut parts);
            item.get("role").and_then(text).unwrap_or("assistant")
        }
        "function_call" | "custom_tool_call" => {
            parts.push(Part::ToolCall {
                name: item.get("name").map(compact).unwrap_or_default(),
                arguments: item
                    .get("arguments")
                    .or_else(|| item.get("input"))
                    .map(compact)
                    .unwrap_or_default(),
                id: item.get("call_id").and_then(text).map(str::to_owned),
            });
            "assistant"
        }
        "function_call_output" | "custom_tool_call_output" => {
            parts.push(Part::ToolResult {
                id: item.get("call_id").and_then(text).map(str::to_owned),
                content: item.get("output").map(flat_text).unwrap_or_default(),
            });
            "tool"
        }
        "reasoning" => {
            let summary = item.get("summary").map(flat_text).unwrap_or_default();
            if summary.is_empty() {
                return None;
            }
            parts.push(Part::Thinking { text: summary });
            "assistant"
        }
        other => {
            parts.push(Part::Attachment {
                kind: other.to_owned(),
            });
            "assistant"
        }
    };
    Some(Message {
        role: role.to_owned(),
        parts,
    })
}

fn system_message(v: &Value) -> Option<Message> {
    let t = flat_text(v);
    (!t.is_empty()).then(|| Message {
        role: "system".to_owned(),
        parts: vec![Part::Text { text: t }],
    })
}

/// Reads a request body. `None` when it is not JSON or not a shape this knows.
pub fn parse_request(body: &[u8]) -> Option<Request> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    let mut req = Request {
        model: obj.get("model").and_then(text).map(str::to_owned),
        stream: obj.get("stream").and_then(Value::as_bool).unwrap_or(false),
        ..Request::default()
    };
    for t in obj
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = t
            .get("name")
            .or_else(|| t.get("function").and_then(|f| f.get("name")))
            .and_then(text)
        {
            req.tools.push(name.to_owned());
        }
    }
    // Anthropic's and Ollama's top-level system prompt, the Responses API's instructions.
    for key in ["system", "instructions"] {
        if let Some(m) = obj.get(key).and_then(system_message) {
            req.messages.push(m);
        }
    }
    if let Some(messages) = obj.get("messages").and_then(Value::as_array) {
        req.messages.extend(messages.iter().map(chat_message));
    } else if let Some(input) = obj.get("input") {
        match input {
            Value::Array(items) => req.messages.extend(items.iter().filter_map(responses_item)),
            other => req.messages.push(Message {
                role: "user".to_owned(),
                parts: vec![Part::Text {
                    text: flat_text(other),
                }],
            }),
        }
    } else if let Some(prompt) = obj.get("prompt") {
        req.messages.push(Message {
            role: "user".to_owned(),
            parts: vec![Part::Text {
                text: flat_text(prompt),
            }],
        });
    } else {
        return None;
    }
    Some(req)
}

fn error_text(e: &Value) -> String {
    match e {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let msg = o.get("message").map(compact).unwrap_or_default();
            match o.get("type").and_then(text) {
                Some(t) if !msg.is_empty() => format!("{t}: {msg}"),
                _ if !msg.is_empty() => msg,
                _ => e.to_string(),
            }
        }
        other => other.to_string(),
    }
}

fn usage_of(u: &Value) -> Option<Usage> {
    let pick = |keys: &[&str]| keys.iter().find_map(|k| u.get(*k).and_then(Value::as_u64));
    Some(Usage {
        input: pick(&["prompt_tokens", "input_tokens"])?,
        output: pick(&["completion_tokens", "output_tokens"])?,
    })
}

/// Reads an answer body: JSON, SSE or NDJSON. `None` when it is none of them.
pub fn parse_reply(body: &[u8]) -> Option<Reply> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    let head = &body[start..];
    if head.starts_with(b"{") || head.starts_with(b"[") {
        if let Ok(v) = serde_json::from_slice::<Value>(head) {
            return Some(json_reply(&v));
        }
        return ndjson_reply(head);
    }
    const SSE_FIELDS: [&[u8]; 5] = [b"data:", b"event:", b":", b"id:", b"retry:"];
    if SSE_FIELDS.iter().any(|f| head.starts_with(f)) {
        return Some(sse_reply(head));
    }
    None
}

fn json_reply(v: &Value) -> Reply {
    let mut r = Reply {
        complete: true,
        ..Reply::default()
    };
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        r.error = Some(error_text(e));
    }
    if let Some(u) = v.get("usage") {
        r.usage = usage_of(u);
    }
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        // OpenAI chat completions (and legacy completions: `text`).
        for c in choices {
            if let Some(m) = c.get("message") {
                r.messages.push(chat_message(m));
            } else if let Some(t) = c.get("text").and_then(text) {
                r.messages.push(Message {
                    role: "assistant".to_owned(),
                    parts: vec![Part::Text { text: t.to_owned() }],
                });
            }
            if let Some(f) = c.get("finish_reason").and_then(text) {
                r.stop_reason = Some(f.to_owned());
            }
        }
    } else if let Some(output) = v.get("output").and_then(Value::as_array) {
        // OpenAI Responses.
        responses_output(output, &mut r);
        r.stop_reason = v.get("status").and_then(text).map(str::to_owned);
    } else if v.get("type").and_then(text) == Some("message") {
        // Anthropic messages.
        let mut parts = Vec::new();
        content_parts(v.get("content").unwrap_or(&Value::Null), &mut parts);
        r.messages.push(Message {
            role: v
                .get("role")
                .and_then(text)
                .unwrap_or("assistant")
                .to_owned(),
            parts,
        });
        r.stop_reason = v.get("stop_reason").and_then(text).map(str::to_owned);
    } else if v.get("message").is_some() || v.get("response").is_some() {
        // Ollama, whole.
        let mut o = OllamaStream::default();
        o.line(v);
        o.finish(&mut r);
        r.complete = true;
    }
    r
}

fn responses_output(output: &[Value], r: &mut Reply) {
    let parts: Vec<Part> = output
        .iter()
        .filter_map(responses_item)
        .flat_map(|m| m.parts)
        .collect();
    r.messages = vec![Message {
        role: "assistant".to_owned(),
        parts,
    }];
}

/// Server-sent events: `(event name, data)` in order. Handles CRLF, `data:` without a space,
/// multi-line data and comments.
pub fn sse_events(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    let (mut event, mut data, mut has_data) = (String::new(), String::new(), false);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if has_data {
                out.push((std::mem::take(&mut event), std::mem::take(&mut data)));
            }
            event.clear();
            has_data = false;
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if has_data {
                    data.push('\n');
                }
                data.push_str(value);
                has_data = true;
            }
            "event" => event = value.to_owned(),
            _ => {}
        }
    }
    if has_data {
        out.push((event, data));
    }
    out
}

fn sse_reply(body: &[u8]) -> Reply {
    let mut r = Reply {
        streamed: true,
        ..Reply::default()
    };
    let mut chat = ChatStream::default();
    let mut anthropic = AnthropicStream::default();
    let mut responses = ResponsesStream::default();
    let mut kind = None;
    for (event, data) in sse_events(body) {
        if data.trim() == "[DONE]" {
            r.complete = true;
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        let t = v
            .get("type")
            .and_then(text)
            .map(str::to_owned)
            .unwrap_or(event);
        if t == "error" || (v.get("error").is_some_and(|e| !e.is_null()) && t.is_empty()) {
            r.error = Some(error_text(v.get("error").unwrap_or(&v)));
            continue;
        }
        if t.starts_with("response.") {
            kind = Some("responses");
            responses.event(&t, &v, &mut r);
        } else if t.starts_with("message_") || t.starts_with("content_block_") || t == "ping" {
            kind = Some("anthropic");
            anthropic.event(&t, &v, &mut r);
        } else if v.get("choices").is_some() {
            kind = kind.or(Some("chat"));
            chat.chunk(&v, &mut r);
        }
    }
    match kind {
        Some("responses") => responses.finish(&mut r),
        Some("anthropic") => anthropic.finish(&mut r),
        _ => chat.finish(&mut r),
    }
    r
}

fn ndjson_reply(body: &[u8]) -> Option<Reply> {
    let mut r = Reply {
        streamed: true,
        ..Reply::default()
    };
    let mut o = OllamaStream::default();
    let mut any = false;
    for line in body.split(|b| *b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        any = true;
        if let Some(e) = v.get("error") {
            r.error = Some(error_text(e));
        }
        o.line(&v);
    }
    if !any {
        return None;
    }
    r.complete = o.done;
    o.finish(&mut r);
    Some(r)
}

/// Reassembles OpenAI chat completion chunks, per choice.
#[derive(Default)]
struct ChatStream {
    /// (choice index, role, text, thinking, refusal, tool calls by index: (id, name, args))
    choices: Vec<ChatChoice>,
}

#[derive(Default)]
struct ChatChoice {
    index: u64,
    role: Option<String>,
    text: String,
    thinking: String,
    refusal: String,
    tools: Vec<(u64, Option<String>, String, String)>,
}

impl ChatStream {
    fn chunk(&mut self, v: &Value, r: &mut Reply) {
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            r.usage = usage_of(u);
        }
        for c in v["choices"].as_array().into_iter().flatten() {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let pos = match self.choices.iter().position(|x| x.index == index) {
                Some(p) => p,
                None => {
                    self.choices.push(ChatChoice {
                        index,
                        ..ChatChoice::default()
                    });
                    self.choices.len() - 1
                }
            };
            let ch = &mut self.choices[pos];
            if let Some(f) = c.get("finish_reason").and_then(text) {
                r.stop_reason = Some(f.to_owned());
            }
            // Legacy completions stream `text` instead of a delta.
            if let Some(t) = c.get("text").and_then(text) {
                ch.text.push_str(t);
            }
            let Some(d) = c.get("delta") else { continue };
            if let Some(role) = d.get("role").and_then(text) {
                ch.role = Some(role.to_owned());
            }
            if let Some(t) = d.get("content").and_then(text) {
                ch.text.push_str(t);
            }
            for key in ["reasoning_content", "reasoning"] {
                if let Some(t) = d.get(key).and_then(text) {
                    ch.thinking.push_str(t);
                }
            }
            if let Some(t) = d.get("refusal").and_then(text) {
                ch.refusal.push_str(t);
            }
            for tc in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ti = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
                let slot = match ch.tools.iter().position(|t| t.0 == ti) {
                    Some(p) => p,
                    None => {
                        ch.tools.push((ti, None, String::new(), String::new()));
                        ch.tools.len() - 1
                    }
                };
                let t = &mut ch.tools[slot];
                if let Some(id) = tc.get("id").and_then(text) {
                    t.1 = Some(id.to_owned());
                }
                let f = &tc["function"];
                if let Some(n) = f.get("name").and_then(text) {
                    t.2.push_str(n);
                }
                if let Some(a) = f.get("arguments").and_then(text) {
                    t.3.push_str(a);
                }
            }
        }
    }

    fn finish(self, r: &mut Reply) {
        for ch in self.choices {
            let mut parts = Vec::new();
            if !ch.thinking.is_empty() {
                parts.push(Part::Thinking { text: ch.thinking });
            }
            if !ch.text.is_empty() {
                parts.push(Part::Text { text: ch.text });
            }
            if !ch.refusal.is_empty() {
                parts.push(Part::Refusal { text: ch.refusal });
            }
            for (_, id, name, arguments) in ch.tools {
                parts.push(Part::ToolCall {
                    name,
                    arguments,
                    id,
                });
            }
            r.messages.push(Message {
                role: ch.role.unwrap_or_else(|| "assistant".to_owned()),
                parts,
            });
        }
    }
}

/// Reassembles Anthropic message events: content blocks by index.
#[derive(Default)]
struct AnthropicStream {
    role: Option<String>,
    /// (index, block type, name, id, accumulated text or JSON, initial input)
    blocks: Vec<(u64, String, String, Option<String>, String, Value)>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl AnthropicStream {
    fn event(&mut self, t: &str, v: &Value, r: &mut Reply) {
        match t {
            "message_start" => {
                let m = &v["message"];
                self.role = m.get("role").and_then(text).map(str::to_owned);
                self.input_tokens = m["usage"].get("input_tokens").and_then(Value::as_u64);
                self.output_tokens = m["usage"].get("output_tokens").and_then(Value::as_u64);
            }
            "content_block_start" => {
                let b = &v["content_block"];
                let kind = b.get("type").and_then(text).unwrap_or("text").to_owned();
                let initial = match kind.as_str() {
                    "text" => b.get("text").map(compact).unwrap_or_default(),
                    "thinking" => b.get("thinking").map(compact).unwrap_or_default(),
                    _ => String::new(),
                };
                self.blocks.push((
                    v.get("index").and_then(Value::as_u64).unwrap_or(0),
                    kind,
                    b.get("name").map(compact).unwrap_or_default(),
                    b.get("id").and_then(text).map(str::to_owned),
                    initial,
                    b.get("input").cloned().unwrap_or(Value::Null),
                ));
            }
            "content_block_delta" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some(block) = self.blocks.iter_mut().rev().find(|b| b.0 == index) else {
                    return;
                };
                let d = &v["delta"];
                for key in ["text", "partial_json", "thinking"] {
                    if let Some(s) = d.get(key).and_then(text) {
                        block.4.push_str(s);
                    }
                }
            }
            "message_delta" => {
                if let Some(s) = v["delta"].get("stop_reason").and_then(text) {
                    r.stop_reason = Some(s.to_owned());
                }
                if let Some(o) = v["usage"].get("output_tokens").and_then(Value::as_u64) {
                    self.output_tokens = Some(o);
                }
                if let Some(i) = v["usage"].get("input_tokens").and_then(Value::as_u64) {
                    self.input_tokens = Some(i);
                }
            }
            "message_stop" => r.complete = true,
            _ => {}
        }
    }

    fn finish(self, r: &mut Reply) {
        let mut parts = Vec::new();
        for (_, kind, name, id, acc, initial) in self.blocks {
            parts.push(match kind.as_str() {
                "text" => Part::Text { text: acc },
                "thinking" => Part::Thinking { text: acc },
                "redacted_thinking" => Part::Thinking {
                    text: "[redacted]".to_owned(),
                },
                "tool_use" | "server_tool_use" => Part::ToolCall {
                    name,
                    arguments: if acc.is_empty() {
                        compact(&initial)
                    } else {
                        acc
                    },
                    id,
                },
                other => Part::Attachment {
                    kind: other.to_owned(),
                },
            });
        }
        r.messages.push(Message {
            role: self.role.unwrap_or_else(|| "assistant".to_owned()),
            parts,
        });
        if let (Some(input), Some(output)) = (self.input_tokens, self.output_tokens) {
            r.usage = Some(Usage { input, output });
        }
    }
}

/// Reassembles OpenAI Responses events: output items by index; `response.completed` (or
/// `.incomplete`, `.failed`) carries the final output and wins.
#[derive(Default)]
struct ResponsesStream {
    /// (output index, item so far)
    items: Vec<(u64, Value)>,
    final_output: Option<Vec<Value>>,
}

impl ResponsesStream {
    fn item(&mut self, index: u64) -> &mut Value {
        let pos = match self.items.iter().position(|i| i.0 == index) {
            Some(p) => p,
            None => {
                self.items
                    .push((index, serde_json::json!({"type": "message", "content": []})));
                self.items.len() - 1
            }
        };
        &mut self.items[pos].1
    }

    fn append(item: &mut Value, key: &str, s: &str) {
        if let Some(obj) = item.as_object_mut() {
            let entry = obj
                .entry(key.to_owned())
                .or_insert_with(|| Value::String(String::new()));
            if let Value::String(acc) = entry {
                acc.push_str(s);
            } else {
                *entry = Value::String(s.to_owned());
            }
        }
    }

    fn event(&mut self, t: &str, v: &Value, r: &mut Reply) {
        let index = v.get("output_index").and_then(Value::as_u64).unwrap_or(0);
        match t {
            "response.output_item.added" | "response.output_item.done" => {
                if let Some(item) = v.get("item") {
                    *self.item(index) = item.clone();
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                let d = v.get("delta").and_then(text).unwrap_or_default();
                let block = if t == "response.refusal.delta" {
                    "refusal"
                } else {
                    "output_text"
                };
                let item = self.item(index);
                if item.get("content").and_then(Value::as_array).is_none() {
                    item["content"] = Value::Array(Vec::new());
                }
                let content = item["content"].as_array_mut().expect("just made an array");
                let ci = v.get("content_index").and_then(Value::as_u64).unwrap_or(0) as usize;
                while content.len() <= ci {
                    content.push(serde_json::json!({"type": block, "text": ""}));
                }
                let key = if block == "refusal" {
                    "refusal"
                } else {
                    "text"
                };
                Self::append(&mut content[ci], key, d);
            }
            "response.function_call_arguments.delta" => {
                let d = v.get("delta").and_then(text).unwrap_or_default();
                Self::append(self.item(index), "arguments", d);
            }
            "response.reasoning_summary_text.delta" => {
                let d = v.get("delta").and_then(text).unwrap_or_default();
                let item = self.item(index);
                item["type"] = Value::String("reasoning".to_owned());
                if item.get("summary").and_then(Value::as_array).is_none() {
                    item["summary"] = serde_json::json!([{"type": "summary_text", "text": ""}]);
                }
                if let Some(first) = item["summary"].get_mut(0) {
                    Self::append(first, "text", d);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                let resp = &v["response"];
                if let Some(out) = resp.get("output").and_then(Value::as_array) {
                    self.final_output = Some(out.clone());
                }
                if let Some(u) = resp.get("usage") {
                    r.usage = usage_of(u);
                }
                if let Some(e) = resp.get("error").filter(|e| !e.is_null()) {
                    r.error = Some(error_text(e));
                }
                r.stop_reason = resp.get("status").and_then(text).map(str::to_owned);
                r.complete = true;
            }
            _ => {}
        }
    }

    fn finish(self, r: &mut Reply) {
        let output = match self.final_output {
            Some(out) => out,
            None => {
                let mut items = self.items;
                items.sort_by_key(|i| i.0);
                items.into_iter().map(|i| i.1).collect()
            }
        };
        responses_output(&output, r);
    }
}

/// Reassembles Ollama NDJSON lines (`/api/chat` messages, `/api/generate` responses).
#[derive(Default)]
struct OllamaStream {
    role: Option<String>,
    text: String,
    thinking: String,
    tools: Vec<Part>,
    done: bool,
    stop: Option<String>,
    usage: (Option<u64>, Option<u64>),
}

impl OllamaStream {
    fn line(&mut self, v: &Value) {
        if let Some(m) = v.get("message") {
            if let Some(role) = m.get("role").and_then(text) {
                self.role = Some(role.to_owned());
            }
            if let Some(t) = m.get("content").and_then(text) {
                self.text.push_str(t);
            }
            if let Some(t) = m.get("thinking").and_then(text) {
                self.thinking.push_str(t);
            }
            if let Some(calls) = m.get("tool_calls") {
                openai_tool_calls(calls, &mut self.tools);
            }
        }
        if let Some(t) = v.get("response").and_then(text) {
            self.text.push_str(t);
        }
        if let Some(t) = v.get("thinking").and_then(text) {
            self.thinking.push_str(t);
        }
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            self.done = true;
            self.stop = v.get("done_reason").and_then(text).map(str::to_owned);
            self.usage = (
                v.get("prompt_eval_count").and_then(Value::as_u64),
                v.get("eval_count").and_then(Value::as_u64),
            );
        }
    }

    fn finish(self, r: &mut Reply) {
        let mut parts = Vec::new();
        if !self.thinking.is_empty() {
            parts.push(Part::Thinking {
                text: self.thinking,
            });
        }
        if !self.text.is_empty() {
            parts.push(Part::Text { text: self.text });
        }
        parts.extend(self.tools);
        r.messages.push(Message {
            role: self.role.unwrap_or_else(|| "assistant".to_owned()),
            parts,
        });
        if r.stop_reason.is_none() {
            r.stop_reason = self.stop;
        }
        if let (Some(input), Some(output)) = self.usage {
            r.usage = Some(Usage { input, output });
        }
    }
}

/// The final text of an answer (all text parts of all messages), for a quick look or a test.
pub fn reply_text(r: &Reply) -> String {
    r.messages
        .iter()
        .flat_map(|m| &m.parts)
        .filter_map(|p| match p {
            Part::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Renders messages for a terminal: `role: text`, continuation lines indented.
pub fn render_messages(messages: &[Message], indent: &str) -> String {
    let mut out = String::new();
    for m in messages {
        if m.parts.is_empty() {
            out.push_str(&format!("{indent}{}: (empty)\n", m.role));
        }
        for p in &m.parts {
            let (label, body) = match p {
                Part::Text { text } => (m.role.clone(), text.clone()),
                Part::Thinking { text } => (format!("{} (thinking)", m.role), text.clone()),
                Part::Refusal { text } => (format!("{} (refusal)", m.role), text.clone()),
                Part::ToolCall {
                    name, arguments, ..
                } => (format!("{} → tool {name}", m.role), arguments.clone()),
                Part::ToolResult { id, content } => (
                    match id {
                        Some(id) => format!("{} (tool result {id})", m.role),
                        None => format!("{} (tool result)", m.role),
                    },
                    content.clone(),
                ),
                Part::Attachment { kind } => (m.role.clone(), format!("[{kind}]")),
            };
            let cont = format!("\n{indent}    ");
            let body = body.trim_end().replace('\n', &cont);
            out.push_str(&format!("{indent}{label}: {body}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        std::fs::read(dir.join(name)).unwrap()
    }

    #[test]
    fn requests_of_every_provider_read_as_messages() {
        let r = parse_request(&fixture("openai-chat.request.json")).unwrap();
        assert_eq!(r.messages.last().unwrap().role, "user");
        let r = parse_request(&fixture("anthropic-messages-tool-use.request.json")).unwrap();
        let parts: Vec<&Part> = r.messages.iter().flat_map(|m| &m.parts).collect();
        assert!(
            parts
                .iter()
                .any(|p| matches!(p, Part::ToolCall { name, .. } if name == "get_weather"))
        );
        assert!(
            parts.iter().any(
                |p| matches!(p, Part::ToolResult { content, .. } if content.contains("Sunny"))
            )
        );
        assert_eq!(r.tools[0], "get_weather");
        let r = parse_request(&fixture("openai-responses-stream.request.json")).unwrap();
        assert_eq!(
            r.messages[0].parts,
            vec![Part::Text {
                text: "What is 2+2?".into()
            }]
        );
        let r = parse_request(&fixture("ollama-api-chat.request.json")).unwrap();
        assert!(!r.messages.is_empty());
        assert!(parse_request(b"not json").is_none());
        assert!(parse_request(b"{\"nothing\":1}").is_none());
    }

    fn sse_text_deltas(name: &str, pick: impl Fn(&Value) -> Option<String>) -> String {
        sse_events(&fixture(name))
            .into_iter()
            .filter_map(|(_, d)| serde_json::from_str::<Value>(&d).ok())
            .filter_map(|v| pick(&v))
            .collect()
    }

    #[test]
    fn streams_reassemble_into_the_final_message() {
        let r = parse_reply(&fixture("openai-chat-stream-usage.sse")).unwrap();
        assert!(r.streamed && r.complete && r.usage.is_some());
        let want = sse_text_deltas("openai-chat-stream-usage.sse", |v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        });
        assert_eq!(reply_text(&r), want);

        let r = parse_reply(&fixture("anthropic-messages-stream.sse")).unwrap();
        let want = sse_text_deltas("anthropic-messages-stream.sse", |v| {
            v["delta"]["text"].as_str().map(str::to_owned)
        });
        assert_eq!(reply_text(&r), want);
        assert!(r.complete && r.usage.is_some());

        let r = parse_reply(&fixture("anthropic-messages-stream-thinking.sse")).unwrap();
        assert!(
            matches!(&r.messages[0].parts[0], Part::Thinking { text } if text.starts_with("The user wants"))
        );

        let r = parse_reply(&fixture("openai-chat-stream-parallel-tool-calls.sse")).unwrap();
        let calls: Vec<_> = r.messages[0]
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::ToolCall { arguments, .. } => Some(arguments.clone()),
                _ => None,
            })
            .collect();
        assert!(calls.len() >= 2, "{calls:?}");
        for a in calls {
            serde_json::from_str::<Value>(&a).expect("arguments reassemble into JSON");
        }

        let r = parse_reply(&fixture("openai-responses-stream.sse")).unwrap();
        assert!(r.complete && !reply_text(&r).is_empty());
        let r = parse_reply(&fixture("openai-responses-stream-tool-call.sse")).unwrap();
        assert!(matches!(&r.messages[0].parts[0], Part::ToolCall { .. }));

        let r = parse_reply(&fixture("ollama-api-chat-stream.ndjson")).unwrap();
        assert!(r.complete && reply_text(&r).starts_with("Why did the"));
    }

    #[test]
    fn whole_answers_and_errors() {
        let r = parse_reply(&fixture("openai-chat.json")).unwrap();
        assert!(!r.streamed && r.complete && !reply_text(&r).is_empty());
        let r = parse_reply(&fixture("anthropic-messages.json")).unwrap();
        assert!(!reply_text(&r).is_empty());
        let r = parse_reply(&fixture("ollama-api-chat.json")).unwrap();
        assert!(!reply_text(&r).is_empty());
        let r = parse_reply(&fixture("openai-error-401-invalid-api-key.json")).unwrap();
        assert!(r.error.unwrap().contains("API key"));
        assert!(parse_reply(b"plain text").is_none());
    }

    #[test]
    fn cut_streams_still_show_what_arrived() {
        let whole = fixture("anthropic-messages-stream.sse");
        let cut = &whole[..whole.len() * 2 / 3];
        let r = parse_reply(cut).unwrap();
        assert!(!r.complete);
        assert!(!reply_text(&r).is_empty());
        let sse = b"data:{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\r\n\r\ndata: {broken\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\r\n\r\n";
        assert_eq!(reply_text(&parse_reply(sse).unwrap()), "ab");
    }

    #[test]
    fn rendering_is_one_line_per_part_with_indented_continuations() {
        let msgs = vec![Message {
            role: "user".into(),
            parts: vec![
                Part::Text {
                    text: "line one\nline two".into(),
                },
                Part::ToolCall {
                    name: "f".into(),
                    arguments: "{}".into(),
                    id: None,
                },
            ],
        }];
        assert_eq!(
            render_messages(&msgs, "  "),
            "  user: line one\n      line two\n  user → tool f: {}\n"
        );
    }
}
