//! Command-line definitions of `lockstock-gateway` (clap only; no behaviour here).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run and operate the LockStock gateway: the governed proxy your AI agents reach by changing
/// their base URL.
///
/// Credentials come from Liberty (`liberty add NAME`); the container variable names
/// (LOCKSTOCK_URL, LOCKSTOCK_GATEWAY_KEY, UPSTREAM_URL, ACCOUNT_PUBLIC_KEY, AGENT_ID, MLS_SEED)
/// override them from the environment, and flags override both.
#[derive(Debug, Parser)]
#[command(
    name = "lockstock-gateway",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// First run on a fresh machine: vault, embedded control plane, gateway and an agent, in
    /// one command. Prints what to export in the agent's shell, then serves until Ctrl-C.
    Quickstart(Quickstart),
    /// Show every setting with secrets masked (or MISSING); fails when a required one is missing.
    Config(Overrides),
    /// Create an agent in the control plane, activate it with a key made on this machine, and
    /// keep its id in Liberty as LOCKSTOCK_AGENT_<NAME>.
    Provision(Provision),
    /// Activate an agent provisioned elsewhere, with the genesis token you were given.
    Activate(Activate),
    /// Generate this gateway's MLS_SEED into Liberty if it is not there (run by provision and
    /// activate).
    Setup,
    /// Manage the account key that transcripts are encrypted to.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Start the gateway: in a Docker container (default) or in this process (--native).
    Start(Start),
    /// Stop the gateway (container or detached native process). Succeeds when nothing runs.
    Stop,
    /// Show whether the gateway runs and is healthy; exit code 1 when it is not.
    Status(Status),
    /// Show the gateway container's output.
    Logs(Logs),
    /// Stop the gateway container and start it again with settings read afresh from Liberty.
    Restart(Restart),
    /// Build or fetch the gateway's container image.
    #[command(subcommand)]
    Image(ImageCommand),
    /// List agents with their lock, budget and chain state.
    Agents(Agents),
    /// Lock an agent: its requests get 429 and never reach the provider.
    Lock(Lock),
    /// Unlock an agent (also clears a chain-fork freeze and an open breaker).
    Unlock(AgentArg),
    /// Set how many tokens an agent may still spend from now, or remove the limit.
    Budget(Budget),
    /// Tune or disable the anomaly breaker of one agent.
    Sentinel(Sentinel),
    /// Show an agent's stamps (its audit chain), newest last.
    Stamps(Stamps),
    /// Show the anomaly breaker's alerts.
    Alerts(Json),
    /// Run the gateway from a settings file (the container's entry point).
    #[command(hide = true)]
    Serve(Serve),
    /// Exit 0 when the gateway at --url answers /healthz with 200 (the container's health check).
    #[command(hide = true)]
    Healthcheck(Healthcheck),
    /// Print shell completions or the man page.
    #[command(hide = true)]
    Generate(Generate),
}

/// Settings that flags may override.
#[derive(Debug, Clone, Args, Default)]
pub struct Overrides {
    /// Provider base URL (overrides UPSTREAM_URL and LOCKSTOCK_UPSTREAM_URL).
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Control plane base URL (overrides LOCKSTOCK_URL).
    #[arg(long = "control-plane", value_name = "URL")]
    pub control_plane: Option<String>,
}

#[derive(Debug, Args)]
pub struct Quickstart {
    /// Provider base URL; by default the provider whose key is in Liberty, else OpenAI.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// Where the embedded control plane listens.
    #[arg(long, default_value = "127.0.0.1:4100")]
    pub cloud_listen: SocketAddr,
    /// Data directory of the embedded control plane [default: $XDG_DATA_HOME/lockstock-cloud].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Name of the agent to provision when none is registered yet.
    #[arg(long, default_value = "quickstart")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct Provision {
    /// The agent's name: letters, digits, '-' and '_'.
    #[arg(long)]
    pub name: String,
    /// Which provider the agent talks to [default: from the provider key in Liberty].
    #[arg(long, value_parser = ["openai", "anthropic-native", "ollama"])]
    pub provider: Option<String>,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Args)]
pub struct Activate {
    /// The agent id (agent_XXXXXXXX_name).
    #[arg(long)]
    pub agent: String,
    /// The genesis token printed when the agent was provisioned (single use, 24 h).
    #[arg(long, env = "LOCKSTOCK_GENESIS_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Name to keep it under in Liberty [default: the name in the id].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Generate the account key into Liberty, register its public half with the control
    /// plane, and print it once. Keep a copy offline: it is the only way to read transcripts.
    Init(Overrides),
}

#[derive(Debug, Args)]
pub struct Start {
    /// Run the gateway in this process instead of a container.
    #[arg(long)]
    pub native: bool,
    /// With --native: run in the background (stop with `lockstock-gateway stop`).
    #[arg(long, requires = "native")]
    pub detach: bool,
    /// Address to listen on.
    #[arg(long, env = "LOCKSTOCK_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// Container image to run [default: lockstock/gateway:<version>].
    #[arg(long, conflicts_with = "native")]
    pub image: Option<String>,
    #[command(flatten)]
    pub container: ContainerFlags,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Flags of container mode (`start`, `restart`).
#[derive(Debug, Clone, Args)]
pub struct ContainerFlags {
    /// An extra label on the container (repeatable; container mode).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// How long to wait for the container to answer /healthz.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct Logs {
    /// Keep printing new output.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines [default: all].
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
}

#[derive(Debug, Args)]
pub struct Restart {
    /// Address to listen on [default: the running container's].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Container image to run [default: the running container's, else lockstock/gateway:<version>].
    #[arg(long)]
    pub image: Option<String>,
    #[command(flatten)]
    pub container: ContainerFlags,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build lockstock/gateway:<version> from this binary: no base image, no registry.
    Build(ImageBuild),
    /// Pull an image through the Docker engine; registry credentials come from Liberty
    /// (LOCKSTOCK_REGISTRY_USER, LOCKSTOCK_REGISTRY_TOKEN) and go only to the engine's API.
    Pull(ImagePull),
}

#[derive(Debug, Args)]
pub struct ImageBuild {
    /// Tag of the image [default: lockstock/gateway:<version>].
    #[arg(long, short)]
    pub tag: Option<String>,
    /// The gateway binary to put in the image [default: this one]; stripped on the way.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// An extra label on the image (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImagePull {
    /// Image reference [default: lockstock/gateway:<version>].
    #[arg(value_name = "REF")]
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct Status {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Json {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Agents {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AgentArg {
    /// Agent id (agent_XXXXXXXX_name) or the name it is kept under in Liberty.
    pub agent: String,
}

#[derive(Debug, Args)]
pub struct Lock {
    /// Agent id or name.
    pub agent: String,
    /// Why; shown to the agent in the 429 answer and kept in the ledger.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("limit").required(true).args(["tokens", "unlimited"]))]
pub struct Budget {
    /// Agent id or name.
    pub agent: String,
    /// Tokens (input + output) the agent may still spend from now.
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Remove the limit.
    #[arg(long)]
    pub unlimited: bool,
}

#[derive(Debug, Args)]
pub struct Sentinel {
    /// Agent id or name.
    pub agent: String,
    /// Hard cap on requests in any minute.
    #[arg(long, value_name = "N")]
    pub max_per_minute: Option<u64>,
    /// Standard deviations above the learned rate that trip the breaker (default 6).
    #[arg(long, value_name = "K")]
    pub sensitivity: Option<f64>,
    /// Turn the breaker off for this agent.
    #[arg(long, conflicts_with = "on")]
    pub off: bool,
    /// Turn the breaker back on.
    #[arg(long)]
    pub on: bool,
}

#[derive(Debug, Args)]
pub struct Stamps {
    /// Agent id or name.
    pub agent: String,
    /// Only stamps after this seq.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// How many to show at most.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Serve {
    /// KEY=VALUE settings file (read once at start; the caller removes it after).
    #[arg(long, value_name = "FILE")]
    pub settings: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// Also run the control plane, from this data directory, in this process (as quickstart
    /// does); the gateway reaches it without a socket.
    #[arg(long, value_name = "DIR")]
    pub control_plane_data: Option<PathBuf>,
    /// Where that control plane serves its API (operators, dashboard).
    #[arg(
        long,
        default_value = "127.0.0.1:4100",
        requires = "control_plane_data"
    )]
    pub control_plane_listen: SocketAddr,
}

#[derive(Debug, Args)]
pub struct Healthcheck {
    /// The gateway to check.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    pub url: String,
}

#[derive(Debug, Args)]
pub struct Generate {
    /// What to print.
    #[arg(value_enum)]
    pub what: lockstock_cli::docs::Generate,
}
