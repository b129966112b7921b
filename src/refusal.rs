//! Everything the gateway itself answers instead of the provider, in one place: the status,
//! the sentence, and the error shape the agent's SDK understands.

use http::{HeaderValue, Response, StatusCode};

use crate::AgentId;
use crate::metrics::Rejection;

/// Why the gateway answered a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    MissingAgent,
    MalformedAgent,
    UnknownAgent(AgentId),
    Locked {
        agent: AgentId,
        reason: Option<String>,
    },
    Budget,
    Fork,
    Breaker,
    StampRejected,
    ControlPlaneDown,
    BodyTooLarge {
        limit: usize,
    },
    BadBody(String),
    UpstreamUnreachable(String),
    UpstreamTimeout,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingAgent | Self::MalformedAgent | Self::BadBody(_) => StatusCode::BAD_REQUEST,
            Self::UnknownAgent(_) => StatusCode::FORBIDDEN,
            Self::Locked { .. } | Self::Budget => StatusCode::TOO_MANY_REQUESTS,
            Self::Fork => StatusCode::CONFLICT,
            Self::Breaker | Self::StampRejected | Self::ControlPlaneDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The sentence the agent's SDK shows. The documented ones are exact.
    pub fn message(&self) -> String {
        match self {
            Self::MissingAgent => "Missing X-D3cipher-Agent header".into(),
            Self::MalformedAgent => {
                "Malformed X-D3cipher-Agent header: expected agent_XXXXXXXX_name".into()
            }
            Self::UnknownAgent(a) => format!(
                "Agent {a} is not registered with this gateway; provision or activate it with lockstock-gateway"
            ),
            Self::Locked { agent, reason } => match reason {
                Some(r) => format!("Agent {agent} is locked by LockStock: {r}"),
                None => format!("Agent {agent} is locked by LockStock"),
            },
            Self::Budget => "Token budget exhausted".into(),
            Self::Fork => "Chain hash mismatch".into(),
            Self::Breaker | Self::StampRejected => "LockStock stamp rejected".into(),
            Self::ControlPlaneDown => {
                "LockStock control plane unreachable; the request was not forwarded".into()
            }
            Self::BodyTooLarge { limit } => {
                format!("Request body is larger than the gateway's limit of {limit} bytes")
            }
            Self::BadBody(why) => format!("Cannot read the request body: {why}"),
            Self::UpstreamUnreachable(why) => format!("The provider could not be reached: {why}"),
            Self::UpstreamTimeout => "The provider did not answer in time".into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::MissingAgent => "missing_agent",
            Self::MalformedAgent => "malformed_agent",
            Self::UnknownAgent(_) => "unknown_agent",
            Self::Locked { .. } => "agent_locked",
            Self::Budget => "token_budget_exhausted",
            Self::Fork => "chain_hash_mismatch",
            Self::Breaker => "breaker_tripped",
            Self::StampRejected => "stamp_rejected",
            Self::ControlPlaneDown => "control_plane_unreachable",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::BadBody(_) => "invalid_request_body",
            Self::UpstreamUnreachable(_) => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
        }
    }

    fn kind(&self, anthropic: bool) -> &'static str {
        match (self.status().as_u16(), anthropic) {
            (429, _) => "rate_limit_error",
            (403, _) => "permission_error",
            (413, true) => "request_too_large",
            (400 | 409 | 413, _) => "invalid_request_error",
            (503, true) => "overloaded_error",
            (_, true) => "api_error",
            _ => "server_error",
        }
    }

    /// Retrying cannot help a policy decision, so SDKs are told not to.
    fn retryable(&self) -> bool {
        matches!(
            self,
            Self::ControlPlaneDown | Self::UpstreamUnreachable(_) | Self::UpstreamTimeout
        )
    }

    pub fn metric(&self) -> Rejection {
        match self {
            Self::MissingAgent => Rejection::MissingAgent,
            Self::MalformedAgent | Self::UnknownAgent(_) => Rejection::UnknownAgent,
            Self::Locked { .. } => Rejection::Locked,
            Self::Budget => Rejection::Budget,
            Self::Fork => Rejection::Fork,
            Self::Breaker => Rejection::Breaker,
            Self::StampRejected => Rejection::StampRejected,
            Self::ControlPlaneDown => Rejection::ControlPlaneDown,
            Self::BodyTooLarge { .. } | Self::BadBody(_) => Rejection::BadRequest,
            Self::UpstreamUnreachable(_) | Self::UpstreamTimeout => Rejection::Upstream,
        }
    }

    /// The JSON body: OpenAI's shape, or Anthropic's for `/v1/messages`.
    pub fn body(&self, anthropic: bool) -> Vec<u8> {
        let message = self.message();
        let value = if anthropic {
            serde_json::json!({
                "type": "error",
                "error": {"type": self.kind(true), "message": message},
            })
        } else {
            serde_json::json!({
                "error": {"message": message, "type": self.kind(false), "code": self.code()},
            })
        };
        serde_json::to_vec(&value).expect("a JSON value serialises")
    }

    pub fn into_response(self, anthropic: bool) -> Response<crate::http::OutBody> {
        let mut resp = Response::new(crate::http::full(self.body(anthropic)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            "x-should-retry",
            HeaderValue::from_static(if self.retryable() { "true" } else { "false" }),
        );
        h.insert("x-lockstock-refusal", HeaderValue::from_static(self.code()));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_statuses_and_messages() {
        let cases = [
            (
                Refusal::MissingAgent,
                400,
                "Missing X-D3cipher-Agent header",
            ),
            (Refusal::Budget, 429, "Token budget exhausted"),
            (Refusal::Fork, 409, "Chain hash mismatch"),
            (Refusal::Breaker, 503, "LockStock stamp rejected"),
        ];
        for (r, status, msg) in cases {
            assert_eq!(r.status().as_u16(), status);
            let v: serde_json::Value = serde_json::from_slice(&r.body(false)).unwrap();
            assert_eq!(v["error"]["message"], msg);
            let v: serde_json::Value = serde_json::from_slice(&r.body(true)).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["message"], msg);
        }
    }
}
