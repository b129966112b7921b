//! The machine fingerprint: public (the machine id is world-readable), so it only binds the
//! vault to this install; the secrecy comes from the device secret.

use crate::crypto;
use crate::error::Error;

/// SHA-256 of the machine id, domain-separated.
pub(crate) fn fingerprint() -> Result<[u8; 32], Error> {
    #[cfg(debug_assertions)]
    if let Some(id) = std::env::var_os(crate::env::LIBERTY_TEST_MACHINE_ID) {
        return Ok(digest(id.as_encoded_bytes()));
    }
    let id = machine_uid::get().map_err(|e| Error::MachineId {
        detail: e.to_string(),
    })?;
    let id = id.trim();
    if id.is_empty() {
        return Err(Error::MachineId {
            detail: "it is empty".into(),
        });
    }
    Ok(digest(id.as_bytes()))
}

fn digest(id: &[u8]) -> [u8; 32] {
    crypto::sha256(&[b"liberty machine fingerprint v1", id])
}

/// A short tag stored in the device slot so that opening the vault on another machine says
/// so plainly instead of failing as a generic decryption error.
pub(crate) fn tag(vault_id: &[u8; 16], fingerprint: &[u8; 32]) -> [u8; 8] {
    let h = crypto::sha256(&[b"liberty machine tag v1", vault_id, fingerprint]);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h[..8]);
    out
}
