//! Shell completions and man pages, rendered from a binary's own clap definition. Every
//! binary has a hidden `generate <bash|zsh|man>` subcommand that prints one of these; the
//! checked-in copies under `completions/` and `man/` are compared against it by a test.

use std::io;

use clap::{Command, ValueEnum};
use clap_complete::Shell;
use clap_mangen::Man;

/// What `generate` renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    /// Bash completion script (install as `completions/<bin>.bash`).
    Bash,
    /// Zsh completion function (install as `completions/_<bin>`).
    Zsh,
    /// Man page in roff (install as `man/<bin>.1`).
    Man,
}

impl Generate {
    /// The checked-in file name for binary `bin`, relative to the repository root.
    pub fn checked_in_path(self, bin: &str) -> String {
        match self {
            Generate::Bash => format!("completions/{bin}.bash"),
            Generate::Zsh => format!("completions/_{bin}"),
            Generate::Man => format!("man/{bin}.1"),
        }
    }
}

/// Renders `cmd` (the binary's full clap command) as `what`.
pub fn render(mut cmd: Command, what: Generate) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let name = cmd.get_name().to_owned();
    match what {
        Generate::Bash => clap_complete::generate(Shell::Bash, &mut cmd, name, &mut out),
        Generate::Zsh => clap_complete::generate(Shell::Zsh, &mut cmd, name, &mut out),
        Generate::Man => render_man(cmd, &mut out)?,
    }
    Ok(out)
}

/// One self-contained page: the usual sections for the binary, then one section per visible
/// subcommand with its synopsis, description and own options (global options are listed once,
/// at the top).
fn render_man(mut cmd: Command, out: &mut Vec<u8>) -> io::Result<()> {
    cmd.build();
    let man = Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let globals: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().to_string())
        .collect();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut sub = sub.clone();
        for id in globals.iter().map(String::as_str).chain(["help"]) {
            if sub.get_arguments().any(|a| a.get_id() == id) {
                sub = sub.mut_arg(id, |a| a.hide(true));
            }
        }
        let title = sub
            .get_bin_name()
            .unwrap_or_else(|| sub.get_name())
            .to_owned();
        let has_args = sub.get_arguments().any(|a| !a.is_hide_set());
        let page = Man::new(sub);
        let mut section = Vec::new();
        page.render_synopsis_section(&mut section)?;
        page.render_description_section(&mut section)?;
        if has_args {
            page.render_options_section(&mut section)?;
        }
        let section = String::from_utf8_lossy(&section)
            .replacen(".SH SYNOPSIS\n", &format!(".SH \"COMMAND: {title}\"\n"), 1)
            .replace(".SH DESCRIPTION\n", ".PP\n")
            .replace(".SH OPTIONS\n", ".SS Options\n");
        out.extend_from_slice(section.as_bytes());
    }
    if cmd.get_after_long_help().is_some() || cmd.get_after_help().is_some() {
        let mut extra = Vec::new();
        man.render_extra_section(&mut extra)?;
        let extra = String::from_utf8_lossy(&extra).replacen(".SH EXTRA\n", ".SH NOTES\n", 1);
        out.extend_from_slice(extra.as_bytes());
    }
    man.render_version_section(out)?;
    Ok(())
}
