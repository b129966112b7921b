//! The gateway as a Docker container, driven through the Docker API: the image (`image
//! build`, `image pull`), and `start`/`stop`/`status`/`logs`/`restart` of the container.
//!
//! Secrets reach the container only through a settings file that exists for the seconds it
//! takes the gateway to start (see [`secrets_file`]); nothing secret goes into the container's
//! environment, command, labels or image.

pub mod commands;
pub mod engine;
pub mod image;
pub mod run;
pub mod secrets_file;

/// The container's name.
pub const CONTAINER_NAME: &str = "lockstock-gateway";
/// Labels on everything this tool creates.
pub const LABEL_MANAGED: &str = "io.lockstock.managed";
pub const LABEL_COMPONENT: &str = "io.lockstock.component";
pub const LABEL_VERSION: &str = "io.lockstock.version";
/// Where the container listens (host networking), on the container.
pub const LABEL_LISTEN: &str = "io.lockstock.listen";
/// The agent ids the container serves (ids are not secret), on the container.
pub const LABEL_AGENTS: &str = "io.lockstock.agents";
/// The user the image runs as (nobody:nogroup); `start` runs as it when the operator is root.
pub const IMAGE_USER: &str = "65534:65534";
pub const IMAGE_UID: u32 = 65534;
/// Where the settings file is mounted (read-only) in the container.
pub const SETTINGS_IN_CONTAINER: &str = "/run/lockstock/settings";
/// Where undelivered transcripts wait in the container (a host directory is mounted there).
pub const SPOOL_IN_CONTAINER: &str = "/var/spool/lockstock";

/// What can go wrong in container mode; one variant per operation, each a sentence.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no Docker engine answers at {endpoint} ({reason}): start Docker (e.g. `sudo systemctl start docker`), set DOCKER_HOST to where it listens, or run `lockstock-gateway start --native`"
    )]
    NoEngine { endpoint: String, reason: String },
    #[error(
        "the Docker engine at {endpoint} refused this user ({reason}): run as root or add the user to the docker group"
    )]
    Denied { endpoint: String, reason: String },
    #[error(
        "the image {image} is not in the Docker engine: build it with `lockstock-gateway image build` (or fetch it with `lockstock-gateway image pull`)"
    )]
    ImageMissing { image: String },
    #[error("failed to inspect the image {image}: {reason}")]
    InspectImage { image: String, reason: String },
    #[error("failed to build the image {tag}: {reason}")]
    Build { tag: String, reason: String },
    #[error("failed to pull {image}: {reason}")]
    Pull { image: String, reason: String },
    #[error("failed to create the container {name}: {reason}")]
    Create { name: String, reason: String },
    #[error("failed to start the container {name}: {reason}")]
    Start { name: String, reason: String },
    #[error("failed to inspect the container {name}: {reason}")]
    Inspect { name: String, reason: String },
    #[error("failed to stop the container {name}: {reason}")]
    Stop { name: String, reason: String },
    #[error("failed to remove the container {name}: {reason}")]
    Remove { name: String, reason: String },
    #[error("failed to read the logs of the container {name}: {reason}")]
    Logs { name: String, reason: String },
    #[error(
        "a container named {name} exists but was not created by lockstock-gateway (no {LABEL_MANAGED} label): remove or rename it"
    )]
    Foreign { name: String },
    #[error("cannot start the gateway; missing:\n  - {}", .0.join("\n  - "))]
    Missing(Vec<String>),
    #[error(
        "the gateway already runs natively (pid {pid}, listening on {listen}): `lockstock-gateway stop` it first"
    )]
    NativeRunning {
        pid: i32,
        listen: std::net::SocketAddr,
    },
    #[error(
        "{listen} is already in use: stop what listens there, or pass --listen with another address"
    )]
    PortTaken { listen: std::net::SocketAddr },
    #[error("the gateway's settings are not valid: {0}")]
    Invalid(String),
    #[error("cannot prepare the container's files: {0}")]
    Files(std::io::Error),
    #[error("the gateway did not start: {why}")]
    Unhealthy { why: String },
}
