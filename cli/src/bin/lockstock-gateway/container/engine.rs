//! The Docker engine: where it is, connecting to it (API version negotiated with the
//! engine), and the errors of every operation, each in one sentence a person can act on.

use std::time::Duration;

use bollard::Docker;

use super::Error;

/// Docker's own variable naming the engine's address (`unix://…`, `tcp://…`).
pub use lockstock::env::DOCKER_HOST;
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// A connected engine.
pub struct Engine {
    pub docker: Docker,
    /// Where it answers (shown in messages).
    pub endpoint: String,
}

/// The message of a bollard error without its "Docker responded with status code …" wrapping.
pub fn reason(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        other => {
            let mut text = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                let more = s.to_string();
                if !text.contains(&more) {
                    text = format!("{text}: {more}");
                }
                src = s.source();
            }
            text
        }
    }
}

/// The HTTP status the engine answered with, when it answered.
pub fn status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Where the engine should be: `DOCKER_HOST`, else the standard socket.
pub fn endpoint() -> String {
    std::env::var(DOCKER_HOST)
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_HOST.to_owned())
}

impl Engine {
    /// Connects and agrees on an API version with the engine (so older engines, e.g. API
    /// 1.41, work). Fails within a few seconds when nothing answers.
    pub async fn connect() -> Result<Self, Error> {
        let endpoint = endpoint();
        let no_engine = |reason: String| Error::NoEngine {
            endpoint: endpoint.clone(),
            reason,
        };
        if let Some(path) = endpoint.strip_prefix("unix://") {
            match std::fs::metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(no_engine("no such socket".into()));
                }
                _ => {}
            }
        }
        let docker = Docker::connect_with_host(&endpoint).map_err(|e| no_engine(reason(&e)))?;
        let docker =
            match tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version()).await {
                Err(_) => return Err(no_engine("no answer within 5 s".into())),
                Ok(Err(e)) => {
                    let why = reason(&e);
                    if why.contains("ermission denied") {
                        return Err(Error::Denied {
                            endpoint,
                            reason: "permission denied".into(),
                        });
                    }
                    return Err(no_engine(why));
                }
                Ok(Ok(d)) => d,
            };
        Ok(Self { docker, endpoint })
    }
}
