//! Reading secrets from the user: hidden prompts, standard input, a file descriptor.

use std::io::{IsTerminal, Read};

use anyhow::{Context, Result, bail};
use liberty_vault::{MAX_VALUE_BYTES, Passphrase, SecretString, env};
use zeroize::Zeroizing;

/// True when we can ask the user: a terminal on standard input and standard error.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Reads all of standard input (bounded), as UTF-8, without one trailing newline.
pub fn read_stdin(what: &str) -> Result<Zeroizing<String>> {
    read_bounded(std::io::stdin().lock(), what)
}

fn read_bounded(reader: impl Read, what: &str) -> Result<Zeroizing<String>> {
    let limit = MAX_VALUE_BYTES + 2;
    let mut bytes = Zeroizing::new(Vec::with_capacity(1024));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("could not read {what}"))?;
    if bytes.len() > limit {
        bail!("{what} is larger than {} KiB", MAX_VALUE_BYTES / 1024);
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    let text = std::str::from_utf8(&bytes).with_context(|| format!("{what} is not UTF-8 text"))?;
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    out.push_str(text);
    Ok(out)
}

/// Exact-capacity copy into a `SecretString` (no reallocation leaves a stray copy).
pub fn to_secret(text: &str) -> SecretString {
    let mut s = String::with_capacity(text.len());
    s.push_str(text);
    SecretString::from(s)
}

/// A hidden prompt on the terminal.
pub fn prompt_hidden(prompt: &str, confirm: bool) -> Result<SecretString> {
    let mut p = dialoguer::Password::new().with_prompt(prompt);
    if confirm {
        p = p.with_confirmation("Repeat it", "The two entries differ; try again");
    }
    let value = p.interact().context("could not read from the terminal")?;
    Ok(SecretString::from(value))
}

/// A yes/no question on the terminal (default no).
pub fn confirm(question: &str) -> Result<bool> {
    dialoguer::Confirm::new()
        .with_prompt(question)
        .default(false)
        .interact()
        .context("could not read from the terminal")
}

/// A passphrase given without a prompt: `--passphrase-fd N`, else `LIBERTY_PASSPHRASE`.
pub fn given_passphrase(fd: Option<u32>) -> Result<Option<Passphrase>> {
    if let Some(fd) = fd {
        // Opening /dev/fd/N duplicates the descriptor; reading it needs no unsafe code.
        let path = format!("/dev/fd/{fd}");
        let file = std::fs::File::open(&path)
            .with_context(|| format!("--passphrase-fd {fd}: the descriptor is not open"))?;
        let text = read_bounded(file, "the passphrase")?;
        let first_line = text.lines().next().unwrap_or_default();
        return Ok(Some(Passphrase::new(to_secret(first_line))?));
    }
    match std::env::var(env::LIBERTY_PASSPHRASE) {
        Ok(p) if !p.is_empty() => Ok(Some(Passphrase::new(SecretString::from(p))?)),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            bail!("{} is not UTF-8 text", env::LIBERTY_PASSPHRASE)
        }
    }
}

/// A passphrase for a new binding: given, else asked twice at a terminal.
pub fn new_passphrase(fd: Option<u32>) -> Result<Passphrase> {
    if let Some(p) = given_passphrase(fd)? {
        return Ok(p);
    }
    if !interactive() {
        bail!(
            "a passphrase is needed but none was given: pass --passphrase-fd N, set {}, or run in a terminal",
            env::LIBERTY_PASSPHRASE
        );
    }
    Ok(Passphrase::new(prompt_hidden(
        "New vault passphrase",
        true,
    )?)?)
}
