//! Every environment variable the vault library reads, in one place.
//!
//! The `liberty` binary reads no others of its own except through clap (which names them in
//! its `--help`).

/// Directory holding the vault (`vault.json`, `vault.lock`). Default: `$XDG_DATA_HOME/liberty`.
pub const LIBERTY_HOME: &str = "LIBERTY_HOME";

/// Directory holding device key files, outside the vault directory so that copying the vault
/// directory does not copy the key. Default: `$XDG_STATE_HOME/liberty/keys`.
pub const LIBERTY_KEY_DIR: &str = "LIBERTY_KEY_DIR";

/// Where `init` and `recover` keep the device secret: `auto` (OS keyring when a Secret Service
/// answers, else the key file; the default), `file`, or `keyring`. Later commands read the
/// store recorded in the vault and ignore this variable.
pub const LIBERTY_KEY_STORE: &str = "LIBERTY_KEY_STORE";

/// The vault passphrase, for vaults created with `init --passphrase` (CI and scripts). A
/// passphrase in the environment is visible to the same user's other processes; prefer a
/// prompt or `--passphrase-fd` where you can. `liberty exec` removes it from the child's
/// environment.
pub const LIBERTY_PASSPHRASE: &str = "LIBERTY_PASSPHRASE";

/// XDG base directory for data (default `~/.local/share`).
pub const XDG_DATA_HOME: &str = "XDG_DATA_HOME";

/// XDG base directory for state (default `~/.local/state`).
pub const XDG_STATE_HOME: &str = "XDG_STATE_HOME";

/// The user's home directory, the base of the XDG defaults.
pub const HOME: &str = "HOME";

/// Debug builds only (release builds ignore it): replaces the machine id, so tests can
/// simulate moving the vault to another machine.
pub const LIBERTY_TEST_MACHINE_ID: &str = "LIBERTY_TEST_MACHINE_ID";

/// Debug builds only (release builds ignore it): milliseconds to sleep after the temporary
/// vault file is written and synced and before it is renamed over the vault, so tests can
/// kill a writer in the middle of a write.
pub const LIBERTY_TEST_PAUSE_WRITE_MS: &str = "LIBERTY_TEST_PAUSE_WRITE_MS";
