//! The commands. They print; the vault library does not.

use std::io::{IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use liberty_vault::{
    Binding, ErrorKind, ExposeSecret, InitOptions, KeyStorePreference, RecoverOptions,
    RecoveryCode, SecretString, Unlock, Vault, dotenv, env,
};

use crate::cli::{Cli, Command};
use crate::input;

/// The exit status for an error (usage errors exit 2 from clap before we get here).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<ExecError>() {
        Some(e) => e.code,
        None => 1,
    }
}

/// `exec` could not start the command; carries the shell-style status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct ExecError {
    code: u8,
    message: String,
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let home = cli.home.clone().unwrap_or_else(liberty_vault::default_home);
    let ctx = Ctx {
        home,
        passphrase_fd: cli.passphrase_fd,
    };
    match cli.command {
        Command::Init { passphrase } => init(&ctx, passphrase),
        Command::Add { name, value, force } => add(&ctx, &name, value, force),
        Command::Show { name, no_newline } => show(&ctx, &name, no_newline),
        Command::List { json } => list(&ctx, json),
        Command::Rm { name } => rm(&ctx, &name),
        Command::Exec { only, command } => exec(&ctx, &only, &command),
        Command::Import { file, force } => import(&ctx, &file, force),
        Command::Export { plaintext } => export(&ctx, plaintext),
        Command::Recover {
            passphrase,
            no_passphrase,
        } => recover(&ctx, passphrase, no_passphrase),
        Command::Status => status(&ctx),
        Command::Generate { what } => {
            let bytes = lockstock_cli::docs::render(Cli::command(), what)?;
            std::io::stdout().lock().write_all(&bytes)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

struct Ctx {
    home: PathBuf,
    passphrase_fd: Option<u32>,
}

impl Ctx {
    /// Opens the vault: with the given passphrase if any, asking for one at a terminal when
    /// the vault needs it.
    fn open(&self) -> Result<Vault> {
        let unlock = match input::given_passphrase(self.passphrase_fd)? {
            Some(p) => Unlock::Passphrase(p),
            None => Unlock::Machine,
        };
        match Vault::open(&self.home, unlock) {
            Err(e) if e.kind() == ErrorKind::PassphraseRequired && input::interactive() => {
                let p = input::prompt_hidden("Vault passphrase", false)?;
                Ok(Vault::open(
                    &self.home,
                    Unlock::Passphrase(liberty_vault::Passphrase::new(p)?),
                )?)
            }
            other => Ok(other?),
        }
    }
}

fn print_recovery_code(code: &RecoveryCode) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\nRecovery code (shown only this once; write it down and keep it away from this machine):\n\n    {}\n\nWith it, `liberty recover` opens the vault after a reinstall, on a new machine, or if\nthis machine's device key is lost. Without it and this machine, the vault cannot be opened.",
        code.expose_secret().as_str()
    )?;
    Ok(())
}

fn init(ctx: &Ctx, passphrase: bool) -> Result<ExitCode> {
    let passphrase = if passphrase {
        Some(input::new_passphrase(ctx.passphrase_fd)?)
    } else {
        None
    };
    let options = InitOptions {
        passphrase,
        key_store: KeyStorePreference::from_env()?,
    };
    let (vault, code) = Vault::init(&ctx.home, options)?;
    let status = Vault::inspect(&ctx.home)?;
    println!("Created the vault {}", vault.path().display());
    println!("Device key:  {}", status.key_location);
    println!(
        "Passphrase:  {}",
        if vault.has_passphrase() {
            "required"
        } else {
            "none (this machine alone opens it)"
        }
    );
    print_recovery_code(&code)?;
    Ok(ExitCode::SUCCESS)
}

fn add(ctx: &Ctx, name: &str, value: Option<String>, force: bool) -> Result<ExitCode> {
    liberty_vault::validate_name(name)?;
    let mut vault = ctx.open()?;
    let from_argv = value.as_deref().is_some_and(|v| v != "-");
    let secret: SecretString = match value {
        Some(v) if v != "-" => {
            eprintln!(
                "liberty: warning: the value was given on the command line, where other users can see it in the process list and your shell history keeps it; next time leave it out to be asked, or pipe it in"
            );
            SecretString::from(v)
        }
        Some(_) => input::to_secret(&input::read_stdin("standard input")?),
        None if !std::io::stdin().is_terminal() => {
            input::to_secret(&input::read_stdin("standard input")?)
        }
        None => input::prompt_hidden(&format!("Value for {name}"), false)?,
    };
    if secret.expose_secret().is_empty() && !from_argv {
        bail!("no value was given (standard input was empty); nothing was stored");
    }
    liberty_vault::validate_value(name, secret.expose_secret())?;
    let replace = force
        || (vault.contains(name)
            && input::interactive()
            && input::confirm(&format!("{name} already exists. Replace it?"))?);
    if vault.contains(name) && !replace && input::interactive() {
        eprintln!("liberty: kept the existing {name}");
        return Ok(ExitCode::from(1));
    }
    if replace {
        vault.set(name, &secret)?;
    } else {
        vault.create(name, &secret)?;
    }
    eprintln!("liberty: stored {name}");
    Ok(ExitCode::SUCCESS)
}

fn show(ctx: &Ctx, name: &str, no_newline: bool) -> Result<ExitCode> {
    let vault = ctx.open()?;
    let value = vault
        .get(name)?
        .ok_or_else(|| liberty_vault::Error::EntryNotFound {
            name: name.to_owned(),
            path: vault.path().to_owned(),
        })?;
    let mut out = std::io::stdout().lock();
    out.write_all(value.expose_secret().as_bytes())?;
    if !no_newline {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn list(ctx: &Ctx, json: bool) -> Result<ExitCode> {
    let vault = ctx.open()?;
    let entries = vault.list();
    let mut out = std::io::stdout().lock();
    if json {
        let items: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "created": rfc3339(e.created),
                    "updated": rfc3339(e.updated),
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &items)?;
        writeln!(out)?;
    } else if entries.is_empty() {
        eprintln!("liberty: the vault is empty; add a secret with `liberty add NAME`");
    } else {
        let width = entries
            .iter()
            .map(|e| e.name.len())
            .max()
            .unwrap_or(0)
            .max(4);
        writeln!(out, "{:width$}  {:20}  UPDATED", "NAME", "CREATED")?;
        for e in &entries {
            let (created, updated) = (rfc3339(e.created), rfc3339(e.updated));
            writeln!(out, "{:width$}  {created:20}  {updated}", e.name)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(ctx: &Ctx, name: &str) -> Result<ExitCode> {
    let mut vault = ctx.open()?;
    if !vault.remove(name)? {
        return Err(liberty_vault::Error::EntryNotFound {
            name: name.to_owned(),
            path: vault.path().to_owned(),
        }
        .into());
    }
    eprintln!("liberty: deleted {name}");
    Ok(ExitCode::SUCCESS)
}

fn exec(ctx: &Ctx, only: &[String], command: &[String]) -> Result<ExitCode> {
    let vault = ctx.open()?;
    let secrets: Vec<(String, SecretString)> = if only.is_empty() {
        vault.entries()?
    } else {
        only.iter()
            .map(|name| {
                let value =
                    vault
                        .get(name)?
                        .ok_or_else(|| liberty_vault::Error::EntryNotFound {
                            name: name.clone(),
                            path: vault.path().to_owned(),
                        })?;
                Ok((name.clone(), value))
            })
            .collect::<Result<_>>()?
    };
    let (program, args) = command.split_first().context("no command given")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env_remove(env::LIBERTY_PASSPHRASE);
    for (name, value) in &secrets {
        cmd.env(name, value.expose_secret());
    }
    // exec() replaces this process: stdio, signals and the exit status are the command's.
    let err = cmd.exec();
    let (code, why) = match err.kind() {
        std::io::ErrorKind::NotFound => (127, "command not found".to_owned()),
        std::io::ErrorKind::PermissionDenied => (126, "permission denied".to_owned()),
        _ => (126, err.to_string()),
    };
    Err(ExecError {
        code,
        message: format!("{program}: {why}"),
    }
    .into())
}

fn import(ctx: &Ctx, file: &Path, force: bool) -> Result<ExitCode> {
    let items = dotenv::read_file(file)?;
    let mut vault = ctx.open()?;
    vault.set_many(&items, force)?;
    eprintln!(
        "liberty: imported {} secret{} from {}; delete that plain-text file now",
        items.len(),
        if items.len() == 1 { "" } else { "s" },
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn export(ctx: &Ctx, plaintext: bool) -> Result<ExitCode> {
    if !plaintext {
        bail!(
            "export prints every secret in plain text, where any program, log or backup that sees the output can read them; if that is what you want, run `liberty export --plaintext`"
        );
    }
    let vault = ctx.open()?;
    let text = dotenv::render(&vault.entries()?);
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn recover(ctx: &Ctx, passphrase: bool, no_passphrase: bool) -> Result<ExitCode> {
    let had_passphrase = Vault::inspect(&ctx.home)?.passphrase;
    let code_text = if input::interactive() {
        input::prompt_hidden("Recovery code", false)?
    } else {
        input::to_secret(&input::read_stdin("the recovery code")?)
    };
    let code = RecoveryCode::parse(code_text.expose_secret())?;
    let new_passphrase = if passphrase || (had_passphrase && !no_passphrase) {
        Some(input::new_passphrase(ctx.passphrase_fd)?)
    } else {
        None
    };
    let options = RecoverOptions {
        passphrase: new_passphrase,
        key_store: KeyStorePreference::from_env()?,
    };
    let (vault, new_code) = Vault::recover(&ctx.home, &code, options)?;
    let status = Vault::inspect(&ctx.home)?;
    println!(
        "Recovered the vault {}: it is bound to this machine, {} secrets re-encrypted under a new key",
        vault.path().display(),
        vault.len()
    );
    println!("Device key:  {}", status.key_location);
    println!(
        "Passphrase:  {}",
        if vault.has_passphrase() {
            "required"
        } else {
            "none"
        }
    );
    println!("The old recovery code no longer works.");
    print_recovery_code(&new_code)?;
    Ok(ExitCode::SUCCESS)
}

fn status(ctx: &Ctx) -> Result<ExitCode> {
    let s = Vault::inspect(&ctx.home)?;
    let binding = match &s.binding {
        Binding::Opens => "yes, this machine opens it".to_owned(),
        Binding::MatchesPassphraseNotChecked => {
            "yes, bound to this machine (the passphrase was not checked)".to_owned()
        }
        Binding::OtherMachine => {
            "NO: bound to another machine; run `liberty recover` with the recovery code".to_owned()
        }
        Binding::KeyMissing => {
            "NO: the device key is missing; run `liberty recover` with the recovery code".to_owned()
        }
        Binding::KeyFails(why) => format!("NO: {why}"),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "Vault:       {}", s.path.display())?;
    writeln!(
        out,
        "Vault id:    {} (format {})",
        s.vault_id, s.format_version
    )?;
    writeln!(out, "Key store:   {}", s.key_location)?;
    writeln!(
        out,
        "Passphrase:  {}",
        if s.passphrase { "yes" } else { "no" }
    )?;
    writeln!(out, "Entries:     {}", s.entries)?;
    writeln!(out, "Opens here:  {binding}")?;
    Ok(if s.binding.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `2025-01-31T12:00:00Z` (UTC, whole seconds).
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
