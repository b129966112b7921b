//! The container commands as `main` dispatches them: arguments in, output and exit code out.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use lockstock::env;

use super::engine::Engine;
use super::run::{self, StartRequest, Started};
use super::{CONTAINER_NAME, image};
use crate::cli::{ContainerFlags, ImageCommand, Logs, Overrides, Restart, Start};
use crate::settings::{Resolved, Sources};

fn request(
    listen: std::net::SocketAddr,
    image: Option<String>,
    flags: &ContainerFlags,
    overrides: &Overrides,
) -> Result<StartRequest> {
    Ok(StartRequest {
        listen,
        image,
        overrides: overrides.clone(),
        labels: run::parse_labels(&flags.labels).map_err(anyhow::Error::msg)?,
        timeout: Duration::from_secs(flags.timeout),
    })
}

/// `start` (container mode). Already running is a success: the wanted state holds.
pub async fn start(src: &Sources, args: &Start) -> Result<ExitCode> {
    let req = request(
        args.listen,
        args.image.clone(),
        &args.container,
        &args.overrides,
    )?;
    report_started(run::start(src, &req).await?);
    Ok(ExitCode::SUCCESS)
}

fn report_started(s: Started) {
    match s {
        Started::Now {
            listen,
            image,
            user,
            healthy_after,
            settings_dir,
        } => {
            println!(
                "gateway running in container {CONTAINER_NAME} (image {image}, user {user}) on http://{listen}; healthy {:.2} s after start",
                healthy_after.as_secs_f64()
            );
            println!(
                "settings were handed over through {} and shredded",
                settings_dir.display()
            );
        }
        Started::Already { listen, uptime } => {
            println!(
                "the gateway is already running (container {CONTAINER_NAME} on http://{listen}{}); `lockstock-gateway restart` re-creates it",
                uptime
                    .map(|u| format!(", up {}", run::human_duration(u)))
                    .unwrap_or_default()
            );
        }
    }
}

/// `restart`: stop, then start with fresh settings; listen address and image default to the
/// running container's.
pub async fn restart(args: &Restart) -> Result<ExitCode> {
    let engine = Engine::connect().await?;
    let (listen, image) = run::current(&engine).await?;
    let listen = match (args.listen, listen) {
        (Some(l), _) | (None, Some(l)) => l,
        (None, None) => env::DEFAULT_LISTEN.parse().expect("a valid default"),
    };
    let req = request(
        listen,
        args.image.clone().or(image),
        &args.container,
        &args.overrides,
    )?;
    if run::stop(&engine).await? {
        println!("stopped the gateway container");
    }
    drop(engine);
    report_started(run::start(&Sources::load(), &req).await?);
    Ok(ExitCode::SUCCESS)
}

/// `stop`: a detached native run and the container; fine when neither runs.
pub async fn stop() -> Result<ExitCode> {
    let native = crate::native::stop().await?;
    if native {
        println!("stopped the native gateway");
    }
    let engine = match Engine::connect().await {
        Ok(e) => e,
        // Without an engine no container can be running: `stop` has reached its goal.
        Err(e) => {
            if !native {
                println!("the gateway is not running");
            }
            eprintln!("note: {e}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    if run::stop(&engine).await? {
        println!("stopped and removed the gateway container");
    } else if !native {
        println!("the gateway is not running");
    }
    Ok(ExitCode::SUCCESS)
}

/// `status` of the container, with the configuration from Liberty (masked).
pub async fn status(json: bool) -> Result<ExitCode> {
    let engine = Engine::connect().await?;
    let mut report = run::status_report(&engine).await?;
    let src = Sources::load();
    match Resolved::resolve(&src, &Overrides::default()) {
        Ok(res) => {
            let (summary, rows) = config_summary(&res);
            report.json["config"] = summary;
            report
                .text
                .push("  configuration (Liberty; used at the next start):".into());
            report
                .text
                .extend(rows.into_iter().map(|(k, v)| format!("    {k:<22} {v}")));
        }
        Err(e) => {
            report.json["config"] = serde_json::json!({"error": format!("{e:#}")});
            report.text.push(format!("  configuration: {e:#}"));
        }
    }
    if json {
        println!("{}", report.json);
    } else {
        for l in &report.text {
            println!("{l}");
        }
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn config_summary(res: &Resolved) -> (serde_json::Value, Vec<(&'static str, String)>) {
    let masked = |v: &Option<crate::settings::Value>| {
        v.as_ref()
            .map(|v| lockstock::secret::mask(&v.value))
            .unwrap_or_else(|| "MISSING".into())
    };
    let agents: Vec<&str> = res.agents.iter().map(|(_, a)| a.as_str()).collect();
    let rows = vec![
        (
            env::LOCKSTOCK_URL,
            res.control_plane.value.as_str().to_owned(),
        ),
        (env::UPSTREAM_URL, res.upstream.value.as_str().to_owned()),
        (env::LOCKSTOCK_PROVIDER, res.provider.0.as_str().to_owned()),
        (env::LOCKSTOCK_GATEWAY_KEY, masked(&res.gateway_key)),
        (env::MLS_SEED, masked(&res.seed)),
        (
            env::ACCOUNT_PUBLIC_KEY,
            res.account_public
                .as_ref()
                .map(|v| v.value.as_str().to_owned())
                .unwrap_or_else(|| "not set (no transcripts)".into()),
        ),
        ("agents", run::list_or_none(&agents)),
    ];
    let json = serde_json::json!({
        "control_plane": res.control_plane.value.as_str(),
        "upstream": res.upstream.value.as_str(),
        "provider": res.provider.0.as_str(),
        "gateway_key": masked(&res.gateway_key),
        "mls_seed": masked(&res.seed),
        "account_public_key": res.account_public.as_ref().map(|v| v.value.as_str()),
        "agents": agents,
        "missing": res.missing_for_gateway(),
    });
    (json, rows)
}

/// `logs`.
pub async fn logs(args: &Logs) -> Result<ExitCode> {
    let engine = Engine::connect().await?;
    if run::logs(&engine, args.follow, args.tail).await? {
        return Ok(ExitCode::SUCCESS);
    }
    let native_log = crate::native::state_dir().join("gateway.log");
    if native_log.exists() {
        eprintln!(
            "there is no gateway container; a native gateway started with --detach logs to {}",
            native_log.display()
        );
    } else {
        eprintln!("there is no gateway container: start one with `lockstock-gateway start`");
    }
    Ok(ExitCode::FAILURE)
}

/// `image build` and `image pull`.
pub async fn image(cmd: &ImageCommand) -> Result<ExitCode> {
    match cmd {
        ImageCommand::Build(args) => {
            let labels = run::parse_labels(&args.labels).map_err(anyhow::Error::msg)?;
            let binary = match &args.binary {
                Some(b) => b.clone(),
                None => std::env::current_exe().context("locating this binary")?,
            };
            let tag = args.tag.clone().unwrap_or_else(image::default_image);
            let engine = Engine::connect().await?;
            let built = image::build(&engine, &tag, &binary, &labels).await?;
            println!(
                "built {} ({}): {:.1} MB; gateway binary {:.1} MB{}, {}",
                built.tag,
                built.id.chars().take(19).collect::<String>(),
                built.size as f64 / 1e6,
                built.binary_size as f64 / 1e6,
                if built.stripped { " stripped" } else { "" },
                if built.libraries == 0 {
                    "static (no shared libraries)".to_owned()
                } else {
                    format!("{} shared libraries", built.libraries)
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Pull(args) => {
            let reference = args.reference.clone().unwrap_or_else(image::default_image);
            let src = Sources::load();
            let user = crate::settings::lookup(
                &src,
                &[env::LOCKSTOCK_REGISTRY_USER],
                Some(env::LOCKSTOCK_REGISTRY_USER),
            )?;
            let token = crate::settings::lookup(
                &src,
                &[env::LOCKSTOCK_REGISTRY_TOKEN],
                Some(env::LOCKSTOCK_REGISTRY_TOKEN),
            )?;
            let credentials = match (user, token) {
                (Some(u), Some(t)) => Some((u.value, t.value)),
                (None, None) => None,
                _ => anyhow::bail!(
                    "set both {} and {} in Liberty (or neither, for a public image)",
                    env::LOCKSTOCK_REGISTRY_USER,
                    env::LOCKSTOCK_REGISTRY_TOKEN
                ),
            };
            let engine = Engine::connect().await?;
            image::pull(&engine, &reference, credentials).await?;
            println!("pulled {reference}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
