//! How exchanges and verification reports look: readable text, or one JSON object per line.

use std::io::Write;

use base64::Engine;
use lockstock::api::Verdict;
use lockstock::chain::{StampKind, flags};
use lockstock_cli::admin::audit::{Body, Exchange, Side};
use lockstock_cli::admin::timefmt::format_ms;
use lockstock_cli::admin::transcript::{self, parse_reply, parse_request};
use lockstock_cli::admin::verify::AgentReport;
use serde::Serialize;

fn verdict(v: &Verdict) -> (&'static str, Option<String>) {
    match v {
        Verdict::Ok { .. } => ("ok", None),
        Verdict::Locked { reason } => ("locked", reason.clone()),
        Verdict::Budget => ("budget", Some("token budget exhausted".to_owned())),
        Verdict::Breaker { reason } => ("breaker", Some(reason.clone())),
        Verdict::Fork => ("fork", None),
        Verdict::Invalid { message } => ("invalid", Some(message.clone())),
    }
}

fn flag_names(f: u8) -> Vec<&'static str> {
    [
        (flags::UNCAPPED, "uncapped"),
        (flags::ESTIMATED, "estimated"),
        (flags::NOT_FORWARDED, "not_forwarded"),
        (flags::CLIENT_GONE, "client_gone"),
        (flags::TRUNCATED, "truncated"),
        (flags::UPSTREAM_FAILED, "upstream_failed"),
    ]
    .into_iter()
    .filter(|(bit, _)| f & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// One side of an exchange as JSON; the body is borrowed, not copied into a tree.
#[derive(Serialize)]
struct SideOut<'a> {
    seq: u64,
    kind: &'static str,
    time: String,
    time_ms: u64,
    model: &'a str,
    tokens_in: u64,
    tokens_out: u64,
    /// Request stamps always carry an estimate; responses when the provider reported none.
    estimated: bool,
    flags: Vec<&'static str>,
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ref_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    hash: String,
    /// `decrypted`, `unavailable` (not an error) or `refused`.
    blob: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The decrypted body, exactly, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation: Option<transcript::Request>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<transcript::Reply>,
}

fn side_out(side: &Side) -> SideOut<'_> {
    let r = &side.record;
    let s = &r.signed.stamp;
    let (verdict, verdict_reason) = verdict(&r.verdict);
    let response = s.kind == StampKind::Response;
    let mut out = SideOut {
        seq: s.seq,
        kind: s.kind.as_str(),
        time: format_ms(s.time_ms),
        time_ms: s.time_ms,
        model: &s.model,
        tokens_in: s.tokens_in,
        tokens_out: s.tokens_out,
        estimated: !response || s.flags & flags::ESTIMATED != 0,
        flags: flag_names(s.flags),
        verdict,
        verdict_reason,
        ref_seq: response.then_some(s.ref_seq),
        status: response.then_some(s.status),
        hash: r.hash.to_hex(),
        blob: "decrypted",
        reason: None,
        body: None,
        body_base64: None,
        conversation: None,
        reply: None,
    };
    match &side.body {
        Body::Plain(bytes) => {
            match std::str::from_utf8(bytes) {
                Ok(text) => out.body = Some(text),
                Err(_) => {
                    out.body_base64 =
                        Some(base64::engine::general_purpose::STANDARD.encode(bytes.as_slice()))
                }
            }
            match s.kind {
                StampKind::Request => out.conversation = parse_request(bytes),
                StampKind::Response => out.reply = parse_reply(bytes),
            }
        }
        Body::Unavailable(u) => {
            out.blob = "unavailable";
            out.reason = Some(u.to_string());
        }
        Body::Refused(r) => {
            out.blob = "refused";
            out.reason = Some(r.reason.clone());
        }
    }
    out
}

/// One line of JSON: `{"agent_id", "request", "response"}`.
pub fn exchange_json(out: &mut impl Write, ex: &Exchange) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct ExchangeOut<'a> {
        agent_id: &'a str,
        request: Option<SideOut<'a>>,
        response: Option<SideOut<'a>>,
    }
    let v = ExchangeOut {
        agent_id: ex.agent.as_str(),
        request: ex.request.as_ref().map(side_out),
        response: ex.response.as_ref().map(side_out),
    };
    serde_json::to_writer(&mut *out, &v)?;
    out.write_all(b"\n")
}

fn tokens_line(side: &Side) -> String {
    let s = &side.record.signed.stamp;
    match s.kind {
        StampKind::Request => {
            let cap = if s.flags & flags::UNCAPPED != 0 {
                "no output cap".to_owned()
            } else {
                format!("output cap {}", s.tokens_out)
            };
            format!("prompt ~{} tokens (estimated), {cap}", s.tokens_in)
        }
        StampKind::Response => {
            let est = if s.flags & flags::ESTIMATED != 0 {
                " (estimated)"
            } else {
                ""
            };
            let mut line = format!(
                "status {}, tokens {} in / {} out{est}",
                s.status, s.tokens_in, s.tokens_out
            );
            for (bit, note) in [
                (flags::NOT_FORWARDED, "never reached the provider"),
                (flags::CLIENT_GONE, "the client went away before the end"),
                (flags::UPSTREAM_FAILED, "the provider's stream broke"),
                (flags::TRUNCATED, "transcript cut at the size limit"),
            ] {
                if s.flags & bit != 0 {
                    line.push_str(", ");
                    line.push_str(note);
                }
            }
            line
        }
    }
}

fn body_text(side: &Side) -> String {
    let s = &side.record.signed.stamp;
    match &side.body {
        Body::Unavailable(u) => format!("    {u}\n"),
        Body::Refused(r) => format!("    {}\n", r.reason),
        Body::Plain(bytes) => {
            let rendered = match s.kind {
                StampKind::Request => parse_request(bytes).map(|r| {
                    let mut t = transcript::render_messages(&r.messages, "    ");
                    if !r.tools.is_empty() {
                        t.push_str(&format!("    (tools offered: {})\n", r.tools.join(", ")));
                    }
                    t
                }),
                StampKind::Response => parse_reply(bytes).map(|r| {
                    let mut t = transcript::render_messages(&r.messages, "    ");
                    if let Some(e) = &r.error {
                        t.push_str(&format!("    error: {e}\n"));
                    }
                    let mut notes = Vec::new();
                    if r.streamed {
                        notes.push("streamed".to_owned());
                    }
                    if r.streamed && !r.complete {
                        notes.push("stream did not finish".to_owned());
                    }
                    if let Some(stop) = &r.stop_reason {
                        notes.push(format!("stop: {stop}"));
                    }
                    if !notes.is_empty() {
                        t.push_str(&format!("    ({})\n", notes.join(", ")));
                    }
                    t
                }),
            };
            match rendered {
                Some(t) if !t.trim().is_empty() => t,
                _ => {
                    let raw = String::from_utf8_lossy(bytes);
                    format!("    {}\n", raw.trim_end().replace('\n', "\n    "))
                }
            }
        }
    }
}

/// A readable block: a header line, then the request and the response.
pub fn exchange_text(out: &mut impl Write, ex: &Exchange) -> std::io::Result<()> {
    let first = ex.request.as_ref().or(ex.response.as_ref());
    let Some(first) = first else { return Ok(()) };
    let s = &first.record.signed.stamp;
    let seqs = match (&ex.request, &ex.response) {
        (Some(a), Some(b)) => format!("seq {} → {}", a.seq(), b.seq()),
        (Some(a), None) => format!("seq {}", a.seq()),
        (None, Some(b)) => format!("seq {} (answers seq {})", b.seq(), s.ref_seq),
        (None, None) => String::new(),
    };
    let (v, reason) = verdict(&first.record.verdict);
    let v = match reason {
        Some(r) => format!("{v} ({r})"),
        None => v.to_owned(),
    };
    writeln!(
        out,
        "=== {seqs} · {} · {} · {v}",
        format_ms(s.time_ms),
        if s.model.is_empty() { "?" } else { &s.model },
    )?;
    if let Some(req) = &ex.request {
        writeln!(out, "  request (seq {}): {}", req.seq(), tokens_line(req))?;
        out.write_all(body_text(req).as_bytes())?;
    }
    match &ex.response {
        Some(resp) => {
            writeln!(
                out,
                "  response (seq {}): {}",
                resp.seq(),
                tokens_line(resp)
            )?;
            out.write_all(body_text(resp).as_bytes())?;
        }
        None if matches!(
            ex.request.as_ref().map(|r| &r.record.verdict),
            Some(Verdict::Ok { .. })
        ) =>
        {
            writeln!(out, "  response: none recorded (yet)")?;
        }
        None => writeln!(out, "  response: none (the request was refused)")?,
    }
    writeln!(out)
}

/// Verification, as text: one line per finding, then a verdict line.
pub fn report_text(out: &mut impl Write, r: &AgentReport) -> std::io::Result<()> {
    for f in &r.findings {
        let note = if f.error { "" } else { "note: " };
        writeln!(out, "{}: {note}{}", r.agent_id, f.message)?;
    }
    let keys = match r.keys_opened {
        Some(n) => format!(", {n} data keys opened"),
        None => String::new(),
    };
    let errors = r.findings.iter().filter(|f| f.error).count();
    if r.ok() {
        writeln!(
            out,
            "{}: ok: {} stamps, {} blobs checked{keys}",
            r.agent_id, r.stamps, r.blobs_checked
        )
    } else {
        writeln!(
            out,
            "{}: FAILED: {errors} problem(s) in {} stamps ({} blobs checked{keys})",
            r.agent_id, r.stamps, r.blobs_checked
        )
    }
}

/// Verification, as one JSON line per agent.
pub fn report_json(out: &mut impl Write, r: &AgentReport) -> std::io::Result<()> {
    let mut v = serde_json::to_value(r).map_err(std::io::Error::other)?;
    v["ok"] = r.ok().into();
    serde_json::to_writer(&mut *out, &v)?;
    out.write_all(b"\n")
}
