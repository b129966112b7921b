//! What the gateway needs to know about provider APIs: which endpoint a request is for,
//! which model and output cap it asks for, and how to clamp the cap or ask for usage.
//!
//! Edits go through [`crate::jsonscan`], so every byte the agent sent that the gateway does
//! not need to change reaches the provider unchanged.

use std::borrow::Cow;
use std::str::FromStr;

use serde_json::Value;

use crate::jsonscan::{self, Member};

/// The provider flavour behind `UPSTREAM_URL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provider {
    #[default]
    OpenAi,
    Anthropic,
    Ollama,
}

impl FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" | "openai-compatible" => Ok(Self::OpenAi),
            "anthropic" | "anthropic-native" => Ok(Self::Anthropic),
            "ollama" => Ok(Self::Ollama),
            other => Err(format!(
                "unknown provider {other:?}: expected openai, anthropic-native or ollama"
            )),
        }
    }
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic-native",
            Self::Ollama => "ollama",
        }
    }
}

/// The API a request is for, from its method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions` (OpenAI and every OpenAI-compatible server, Ollama included).
    ChatCompletions,
    /// `/v1/responses`.
    Responses,
    /// `/v1/completions` (legacy).
    Completions,
    /// `/v1/messages` (Anthropic).
    Messages,
    /// `/api/chat` and `/api/generate` (Ollama native).
    OllamaNative,
    /// Anything else: forwarded and stamped, nothing to clamp.
    Other,
}

/// OpenAI SDKs configured with a base URL lacking `/v1` send `/chat/completions`; providers
/// want `/v1/chat/completions`. Known OpenAI-style paths gain the prefix, others pass as is.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    const BARE: &[&str] = &[
        "/chat/completions",
        "/responses",
        "/completions",
        "/embeddings",
        "/models",
        "/messages",
        "/moderations",
    ];
    let bare = BARE.iter().any(|p| {
        path == *p
            || path
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('/'))
    });
    if bare {
        Cow::Owned(format!("/v1{path}"))
    } else {
        Cow::Borrowed(path)
    }
}

impl Endpoint {
    /// Classifies a normalized path.
    pub fn of(method: &http::Method, path: &str) -> Self {
        if method != http::Method::POST {
            return Self::Other;
        }
        match path.trim_end_matches('/') {
            "/v1/chat/completions" | "/chat/completions" | "/api/v1/chat/completions" => {
                Self::ChatCompletions
            }
            "/v1/responses" => Self::Responses,
            "/v1/completions" => Self::Completions,
            "/v1/messages" => Self::Messages,
            "/api/chat" | "/api/generate" => Self::OllamaNative,
            _ => Self::Other,
        }
    }

    /// Whether errors for this endpoint use Anthropic's error shape.
    pub fn anthropic_errors(self) -> bool {
        self == Self::Messages
    }
}

/// What a request body asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    pub model: String,
    /// The output cap requested, if any.
    pub cap: Option<u64>,
    pub stream: bool,
    /// OpenAI chat streams: the client asked for `stream_options.include_usage`.
    pub include_usage: bool,
}

/// A parsed request body, ready to be edited.
pub struct RequestBody<'a> {
    bytes: &'a [u8],
    endpoint: Endpoint,
    pub ask: Ask,
}

fn member_value<'b>(bytes: &'b [u8], members: &[Member], key: &str) -> Option<&'b [u8]> {
    jsonscan::find(bytes, members, key).map(|m| &bytes[m.value.clone()])
}

fn parse_u64(raw: Option<&[u8]>) -> Option<u64> {
    let v: Value = serde_json::from_slice(raw?).ok()?;
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

impl<'a> RequestBody<'a> {
    /// Reads a JSON request body for `endpoint`. `None` when it is not a JSON object (the
    /// provider will say what is wrong with it; the gateway forwards it untouched).
    pub fn parse(endpoint: Endpoint, bytes: &'a [u8]) -> Option<Self> {
        if endpoint == Endpoint::Other && !bytes.trim_ascii_start().starts_with(b"{") {
            return None;
        }
        let members = jsonscan::members(bytes).ok()?;
        let get = |k| member_value(bytes, &members, k);
        let model = get("model")
            .and_then(|raw| serde_json::from_slice::<String>(raw).ok())
            .map(|m| crate::chain::clip_model(&m))
            .unwrap_or_default();
        let stream = match get("stream") {
            Some(b"true") => true,
            Some(_) => false,
            // Ollama's native API streams unless told otherwise.
            None => endpoint == Endpoint::OllamaNative,
        };
        let cap = match endpoint {
            Endpoint::ChatCompletions => [
                parse_u64(get("max_completion_tokens")),
                parse_u64(get("max_tokens")),
            ]
            .into_iter()
            .flatten()
            .min(),
            Endpoint::Responses => parse_u64(get("max_output_tokens")),
            Endpoint::Completions | Endpoint::Messages => parse_u64(get("max_tokens")),
            Endpoint::OllamaNative => get("options")
                .and_then(|raw| serde_json::from_slice::<Value>(raw).ok())
                .and_then(|o| o.get("num_predict").and_then(Value::as_i64))
                .filter(|n| *n >= 0)
                .map(|n| n as u64),
            Endpoint::Other => None,
        };
        let include_usage = get("stream_options")
            .and_then(|raw| serde_json::from_slice::<Value>(raw).ok())
            .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
            .unwrap_or(false);
        Some(Self {
            bytes,
            endpoint,
            ask: Ask {
                model,
                cap,
                stream,
                include_usage,
            },
        })
    }

    /// Whether the gateway must ask an OpenAI-style stream for usage itself.
    pub fn needs_usage_injection(&self) -> bool {
        self.endpoint == Endpoint::ChatCompletions && self.ask.stream && !self.ask.include_usage
    }

    /// The body to forward: output cap clamped to `grant` (set when the request had none),
    /// and `stream_options.include_usage` added when `inject_usage`. `None` when unchanged.
    pub fn rewrite(
        &self,
        grant: Option<u64>,
        provider: Provider,
        inject_usage: bool,
    ) -> Option<Vec<u8>> {
        let clamp = grant.filter(|g| self.ask.cap.is_none_or(|cap| cap > *g));
        if clamp.is_none() && !inject_usage {
            return None;
        }
        let mut body = self.bytes.to_vec();
        if let Some(g) = clamp {
            body = clamp_cap(&body, self.endpoint, provider, g);
        }
        if inject_usage {
            body = set_nested(&body, "stream_options", "include_usage", "true");
        }
        Some(body)
    }
}

fn rescan(body: &[u8]) -> Vec<Member> {
    jsonscan::members(body).expect("edits keep the body a JSON object")
}

fn clamp_cap(body: &[u8], endpoint: Endpoint, provider: Provider, grant: u64) -> Vec<u8> {
    let n = grant.to_string();
    let members = rescan(body);
    let has = |k| jsonscan::find(body, &members, k).is_some();
    match endpoint {
        Endpoint::ChatCompletions => {
            let mut out = body.to_vec();
            let mut touched = false;
            for key in ["max_completion_tokens", "max_tokens"] {
                if has(key) {
                    out = jsonscan::set(&out, &rescan(&out), key, &n);
                    touched = true;
                }
            }
            if !touched {
                // OpenAI's current name; Ollama's compatible endpoint knows only the old one.
                let key = if provider == Provider::Ollama {
                    "max_tokens"
                } else {
                    "max_completion_tokens"
                };
                out = jsonscan::set(&out, &rescan(&out), key, &n);
            }
            out
        }
        Endpoint::Responses => jsonscan::set(body, &members, "max_output_tokens", &n),
        Endpoint::Completions | Endpoint::Messages => {
            jsonscan::set(body, &members, "max_tokens", &n)
        }
        Endpoint::OllamaNative => set_nested(body, "options", "num_predict", &n),
        Endpoint::Other => body.to_vec(),
    }
}

/// Sets `outer.inner = value`, creating `outer` when absent or not an object.
fn set_nested(body: &[u8], outer: &str, inner: &str, value: &str) -> Vec<u8> {
    let members = rescan(body);
    let new_outer = match member_value(body, &members, outer) {
        Some(raw) if raw.starts_with(b"{") => {
            let inner_members = jsonscan::members(raw).expect("a scanned object value");
            String::from_utf8(jsonscan::set(raw, &inner_members, inner, value))
                .expect("edits of valid UTF-8 stay UTF-8")
        }
        _ => format!("{{\"{inner}\":{value}}}"),
    };
    jsonscan::set(body, &members, outer, &new_outer)
}

/// Rough prompt size in tokens (about four bytes each) for reservations before the provider
/// reports the real count.
pub fn estimate_tokens(body: &[u8]) -> u64 {
    (body.len() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixture as fixture;

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn paths_without_v1_gain_it() {
        assert_eq!(normalize_path("/chat/completions"), "/v1/chat/completions");
        assert_eq!(normalize_path("/responses"), "/v1/responses");
        assert_eq!(normalize_path("/models/gpt-4o"), "/v1/models/gpt-4o");
        assert_eq!(
            normalize_path("/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(normalize_path("/api/chat"), "/api/chat");
        assert_eq!(normalize_path("/chat/completionsX"), "/chat/completionsX");
    }

    #[test]
    fn classifies_endpoints() {
        let post = http::Method::POST;
        assert_eq!(
            Endpoint::of(&post, "/v1/chat/completions"),
            Endpoint::ChatCompletions
        );
        assert_eq!(Endpoint::of(&post, "/v1/messages"), Endpoint::Messages);
        assert_eq!(Endpoint::of(&post, "/v1/responses"), Endpoint::Responses);
        assert_eq!(Endpoint::of(&post, "/api/chat"), Endpoint::OllamaNative);
        assert_eq!(
            Endpoint::of(&http::Method::GET, "/v1/messages"),
            Endpoint::Other
        );
    }

    #[test]
    fn reads_what_each_fixture_asks_for() {
        let b = fixture("anthropic-messages.request.json");
        let r = RequestBody::parse(Endpoint::Messages, &b).unwrap();
        assert_eq!(r.ask.cap, json(&b)["max_tokens"].as_u64());
        assert!(!r.ask.model.is_empty());

        let b = fixture("openai-chat-stream.request.json");
        let r = RequestBody::parse(Endpoint::ChatCompletions, &b).unwrap();
        assert!(r.ask.stream && !r.ask.include_usage && r.needs_usage_injection());

        let b = fixture("openai-chat-stream-usage.request.json");
        let r = RequestBody::parse(Endpoint::ChatCompletions, &b).unwrap();
        assert!(r.ask.stream && r.ask.include_usage && !r.needs_usage_injection());

        let b = fixture("ollama-api-chat-stream.request.json");
        let r = RequestBody::parse(Endpoint::OllamaNative, &b).unwrap();
        assert!(r.ask.stream);
    }

    #[test]
    fn clamps_and_sets_caps_per_api() {
        let b = br#"{"model":"gpt-4o","max_tokens":4000,"messages":[]}"#;
        let r = RequestBody::parse(Endpoint::ChatCompletions, b).unwrap();
        assert_eq!(r.ask.cap, Some(4000));
        let out = r.rewrite(Some(100), Provider::OpenAi, false).unwrap();
        assert_eq!(out, br#"{"model":"gpt-4o","max_tokens":100,"messages":[]}"#);
        assert!(
            r.rewrite(Some(5000), Provider::OpenAi, false).is_none(),
            "below the grant: untouched"
        );
        assert!(r.rewrite(None, Provider::OpenAi, false).is_none());

        let b = br#"{"model":"gpt-4o","messages":[]}"#;
        let r = RequestBody::parse(Endpoint::ChatCompletions, b).unwrap();
        let out = json(&r.rewrite(Some(7), Provider::OpenAi, false).unwrap());
        assert_eq!(out["max_completion_tokens"], 7);
        let out = json(&r.rewrite(Some(7), Provider::Ollama, false).unwrap());
        assert_eq!(out["max_tokens"], 7);

        let b = br#"{"model":"m","max_tokens":50,"max_completion_tokens":40}"#;
        let r = RequestBody::parse(Endpoint::ChatCompletions, b).unwrap();
        let out = json(&r.rewrite(Some(10), Provider::OpenAi, false).unwrap());
        assert_eq!(
            (
                out["max_tokens"].as_u64(),
                out["max_completion_tokens"].as_u64()
            ),
            (Some(10), Some(10))
        );

        let b = br#"{"model":"m","input":"hi"}"#;
        let r = RequestBody::parse(Endpoint::Responses, b).unwrap();
        assert_eq!(
            json(&r.rewrite(Some(9), Provider::OpenAi, false).unwrap())["max_output_tokens"],
            9
        );

        let b = br#"{"model":"llama3","messages":[],"options":{"temperature":0.2}}"#;
        let r = RequestBody::parse(Endpoint::OllamaNative, b).unwrap();
        let out = json(&r.rewrite(Some(3), Provider::Ollama, false).unwrap());
        assert_eq!(out["options"]["num_predict"], 3);
        assert_eq!(out["options"]["temperature"], 0.2);
    }

    #[test]
    fn injects_usage_without_losing_other_stream_options() {
        let b = br#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}"#;
        let r = RequestBody::parse(Endpoint::ChatCompletions, b).unwrap();
        assert!(r.needs_usage_injection());
        let out = json(&r.rewrite(None, Provider::OpenAi, true).unwrap());
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["stream_options"]["include_obfuscation"], false);

        let b = br#"{"model":"m","stream":true}"#;
        let r = RequestBody::parse(Endpoint::ChatCompletions, b).unwrap();
        let out = json(&r.rewrite(Some(5), Provider::OpenAi, true).unwrap());
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["max_completion_tokens"], 5);
    }

    #[test]
    fn hostile_bodies_are_left_alone() {
        for bad in [&b"not json"[..], b"[1,2]", b"{\"model\":", b"\xff\xfe"] {
            assert!(RequestBody::parse(Endpoint::ChatCompletions, bad).is_none());
        }
        // A model name that is not a string, a cap that is not a number: no crash, no cap.
        let b = br#"{"model":{"x":1},"max_tokens":"lots"}"#;
        let r = RequestBody::parse(Endpoint::ChatCompletions, b).unwrap();
        assert_eq!(r.ask.model, "");
        assert_eq!(r.ask.cap, None);
        assert!(
            "bogus"
                .parse::<Provider>()
                .unwrap_err()
                .contains("expected")
        );
    }
}
