//! The container's side: `serve --settings FILE` and `healthcheck`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::BodyExt;

use crate::cli::Serve;

pub async fn serve(args: &Serve) -> Result<()> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&args.settings)
            .with_context(|| format!("reading the settings file {}", args.settings.display()))?,
    );
    let settings = lockstock::config::parse_settings(&text)?;
    drop(text);
    let listen = settings
        .get(lockstock::env::LOCKSTOCK_LISTEN)
        .and_then(|v| v.parse().ok())
        .unwrap_or(args.listen);
    let listener = crate::native::bind(listen).await?;
    let shutdown = crate::native::shutdown_signal();
    let Some(data) = &args.control_plane_data else {
        return crate::native::run(&settings, listener, shutdown, None).await;
    };
    let cloud_listener = crate::native::bind(args.control_plane_listen).await?;
    let cloud = crate::native::EmbeddedControlPlane::start(data, cloud_listener)?;
    let result = crate::native::run(&settings, listener, shutdown, Some(cloud.in_process())).await;
    result.and(cloud.stop().await)
}

/// Ok when `url` answers 200 within 2 s.
pub async fn healthy(url: &str) -> Result<()> {
    let client = lockstock::http::client(lockstock::http::ClientOptions {
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    });
    let req = http::Request::get(url).body(lockstock::http::full(bytes::Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client.request(req))
        .await
        .context("no answer within 2 s")??;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        bail!("{status}: {}", String::from_utf8_lossy(&body).trim())
    }
}

pub async fn healthcheck(url: &str) -> Result<()> {
    healthy(&format!("{}/healthz", url.trim_end_matches('/'))).await
}
