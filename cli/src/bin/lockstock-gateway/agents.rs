//! Making agents and keys: `setup`, `provision`, `activate`, `account init`.

use anyhow::{Context, Result, bail};
use liberty_vault::ExposeSecret;
use lockstock::AgentId;
use lockstock::api::{AccountKeyRequest, ActivateRequest, ProvisionRequest};
use lockstock::env;
use lockstock::seal::AccountKey;

use crate::cli::{Activate, Overrides, Provision};
use crate::settings::{Resolved, Sources, secret};

/// Makes sure `MLS_SEED` is in the vault; returns true when it was created now.
pub fn setup(src: &mut Sources) -> Result<bool> {
    let vault = src.vault_mut()?;
    if vault.contains(env::MLS_SEED) {
        return Ok(false);
    }
    let seed = lockstock::secret::random_key();
    vault.create(env::MLS_SEED, &secret(&hex::encode(seed.expose_secret())))?;
    Ok(true)
}

fn seed(src: &Sources) -> Result<lockstock::secret::SecretKey32> {
    let v = crate::settings::lookup(src, &[env::MLS_SEED], Some(env::MLS_SEED))?
        .context("MLS_SEED is missing: run `lockstock-gateway setup`")?;
    lockstock::secret::key_from_hex(&v.value).context("MLS_SEED is not 64 hex characters")
}

/// Activates `agent` with the key this gateway derives, and files its id in the vault.
async fn activate_and_keep(
    src: &mut Sources,
    res: &Resolved,
    agent: &AgentId,
    token: String,
    name: &str,
) -> Result<()> {
    let key = lockstock::agent::signing_key(&seed(src)?, agent);
    res.gateway()?
        .activate(&ActivateRequest {
            agent_id: agent.clone(),
            genesis_token: token,
            public_key: hex::encode(key.verifying_key().to_bytes()),
        })
        .await
        .with_context(|| format!("activating {agent}"))?;
    let vault_name = lockstock::agent::vault_name_for(name);
    src.vault_mut()?.set(&vault_name, &secret(agent.as_str()))?;
    println!("{agent} is active; its id is kept in Liberty as {vault_name}");
    Ok(())
}

pub async fn provision(src: &mut Sources, args: Provision) -> Result<()> {
    lockstock::agent::validate_name(&args.name)?;
    let vault_name = lockstock::agent::vault_name_for(&args.name);
    if src.vault_mut()?.contains(&vault_name) {
        bail!(
            "an agent is already kept as {vault_name}; pick another --name or `liberty rm {vault_name}` first"
        );
    }
    if setup(src)? {
        eprintln!("generated MLS_SEED into Liberty (the root of this gateway's agent keys)");
    }
    let res = Resolved::resolve(src, &args.overrides)?;
    let provider = args
        .provider
        .unwrap_or_else(|| res.provider.0.as_str().to_owned());
    let p = res
        .admin()?
        .provision(&ProvisionRequest {
            name: args.name.clone(),
            provider: Some(provider),
        })
        .await
        .context("provisioning the agent")?;
    activate_and_keep(src, &res, &p.agent_id, p.genesis_token, &args.name).await?;
    println!(
        "\nAgents send their requests to this gateway with the header:\n  X-D3cipher-Agent: {}",
        p.agent_id
    );
    Ok(())
}

pub async fn activate(src: &mut Sources, args: Activate) -> Result<()> {
    let agent: AgentId = args.agent.trim().parse()?;
    let name = args.name.unwrap_or_else(|| agent.name().to_owned());
    lockstock::agent::validate_name(&name)?;
    if setup(src)? {
        eprintln!("generated MLS_SEED into Liberty (the root of this gateway's agent keys)");
    }
    let res = Resolved::resolve(src, &args.overrides)?;
    activate_and_keep(src, &res, &agent, args.token, &name).await
}

pub async fn account_init(src: &mut Sources, flags: &Overrides) -> Result<()> {
    let res = Resolved::resolve(src, flags)?;
    if res.account_secret_present {
        bail!(
            "an account key is already in Liberty ({}); to replace it use `lockstock-rotate`",
            env::LOCKSTOCK_ACCOUNT_KEY
        );
    }
    let admin = res.admin()?;
    let key = AccountKey::generate();
    let public = key.public_key();
    // Keep it before registering: a key registered but lost would make transcripts unreadable.
    let vault = src.vault_mut()?;
    vault.create(env::LOCKSTOCK_ACCOUNT_KEY, &secret(&key.to_hex()))?;
    vault.set(env::LOCKSTOCK_ACCOUNT_PUBLIC_KEY, &secret(&public.to_hex()))?;
    admin
        .set_account_key(&AccountKeyRequest {
            public_key: public.to_hex(),
            verification_hash: key.verification_hash(),
            retire_key_id: None,
        })
        .await
        .context("registering the account public key")?;
    println!("{}", key.to_hex().as_str());
    eprintln!(
        "\nThis is your account key ({} in Liberty). It is the only way to read transcripts:\n\
         keep a copy offline. The control plane and the gateway only ever get its public half ({}).",
        env::LOCKSTOCK_ACCOUNT_KEY,
        public.key_id()
    );
    Ok(())
}
