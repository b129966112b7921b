//! `quickstart`: everything a first run needs, in this one process.

use anyhow::{Context, Result, bail};
use liberty_vault::{InitOptions, Vault};
use lockstock::env;

use crate::cli::{Overrides, Provision, Quickstart};
use crate::native::EmbeddedControlPlane;
use crate::settings::{Resolved, Sources, secret};

pub async fn quickstart(args: Quickstart) -> Result<()> {
    // 1. The vault.
    let home = liberty_vault::default_home();
    if !Vault::exists(&home) {
        let (_, code) = Vault::init(&home, InitOptions::default())?;
        eprintln!(
            "Created a Liberty vault at {}.\nIts recovery code, shown only now; keep it offline:\n\n    {}\n",
            home.display(),
            code.expose_secret().as_str()
        );
    }
    let mut src = Sources::load();
    src.vault_mut()?;

    // 2. The embedded control plane, with its keys kept in the vault.
    let data = args
        .data
        .clone()
        .or_else(lockstock_cloud::default_data_dir)
        .context("cannot tell where to keep the control plane's data: set HOME or pass --data")?;
    match lockstock_cloud::Account::init(&data) {
        Ok(keys) => {
            let vault = src.vault_mut()?;
            vault.set(env::LOCKSTOCK_API_KEY, &keys.admin_key)?;
            vault.set(env::LOCKSTOCK_GATEWAY_KEY, &keys.gateway_key)?;
            eprintln!(
                "Created a control plane in {} (admin and gateway keys kept in Liberty).",
                data.display()
            );
        }
        Err(lockstock_cloud::Error::AccountExists(_)) => {
            let vault = src.vault_mut()?;
            if !vault.contains(env::LOCKSTOCK_API_KEY)
                || !vault.contains(env::LOCKSTOCK_GATEWAY_KEY)
            {
                bail!(
                    "a control plane already exists in {} but its keys are not in Liberty; add them with \
                     `liberty add LOCKSTOCK_API_KEY` and `liberty add LOCKSTOCK_GATEWAY_KEY`, or pass --data with a new directory",
                    data.display()
                );
            }
        }
        Err(e) => return Err(e.into()),
    }
    let cloud_url = format!("http://{}", args.cloud_listen);
    let cloud_listener = crate::native::bind(args.cloud_listen).await?;
    // Provisioning below goes over HTTP, like any operator's; the gateway goes in-process.
    let cloud = EmbeddedControlPlane::start(&data, cloud_listener)?;

    // 3. An agent, if none is registered yet.
    let overrides = Overrides {
        upstream: args.upstream.clone(),
        control_plane: Some(cloud_url.clone()),
    };
    crate::agents::setup(&mut src)?;
    if src.agents().is_empty() {
        crate::agents::provision(
            &mut src,
            Provision {
                name: args.name.clone(),
                provider: None,
                overrides: overrides.clone(),
            },
        )
        .await?;
    }

    // 4. The gateway.
    let src = Sources::load();
    let res = Resolved::resolve(&src, &overrides)?;
    let listener = crate::native::bind(args.listen).await?;
    let settings = res.gateway_settings(args.listen);
    print_exports(&res, &args, &data);
    let result = crate::native::run(
        &settings,
        listener,
        crate::native::shutdown_signal(),
        Some(cloud.in_process()),
    )
    .await;
    result.and(cloud.stop().await)
}

fn print_exports(res: &Resolved, args: &Quickstart, data: &std::path::Path) {
    let gw = format!("http://{}", args.listen);
    let default = res
        .default_agent
        .as_ref()
        .map(|a| format!("requests without a header count as {a}"))
        .unwrap_or_else(|| "send X-D3cipher-Agent with each request".into());
    println!("\nLockStock is running.");
    println!("  gateway        {gw}   ({default})");
    println!("  upstream       {}", res.upstream.value.as_str());
    println!(
        "  control plane  http://{}   (data in {})",
        args.cloud_listen,
        data.display()
    );
    println!("\nIn your agent's shell:\n");
    println!("  export OPENAI_BASE_URL={gw}/v1");
    println!("  export ANTHROPIC_BASE_URL={gw}");
    match (&res.openai_key, &res.anthropic_key) {
        (None, None) => println!(
            "\n(The agent keeps its own provider key. Or keep it once in Liberty with `liberty add {}`\n and set the agent's key to `lockstock`: the gateway adds the real one.)",
            env::OPENAI_API_KEY
        ),
        _ => println!(
            "  export OPENAI_API_KEY=lockstock ANTHROPIC_API_KEY=lockstock   # the gateway adds the real keys"
        ),
    }
    println!(
        "\nThen: `lockstock-gateway agents`, `lockstock-gateway stamps {}`. Ctrl-C stops both.\n",
        res.agents
            .first()
            .map(|(n, _)| n.to_lowercase())
            .unwrap_or_default()
    );
    let _ = secret;
}
