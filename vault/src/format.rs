//! The vault file format (version 1): JSON, one object, every binary field base64.
//!
//! ```text
//! { "magic": "liberty-vault", "version": 1, "vault_id": "<32 hex>", "created": <unix s>,
//!   "slots": {
//!     "device":   { "store": "file"|"keyring", "machine": "<16 hex>", "salt": b64(32),
//!                   "passphrase": null | { "kdf": "argon2id", "version": 19,
//!                                          "m_kib": 19456, "t": 2, "p": 1, "salt": b64(16) },
//!                   "sealed": { "nonce": b64(12), "ciphertext": b64(48) } },
//!     "recovery": { "kdf": "hkdf-sha256", "salt": b64(32),
//!                   "sealed": { "nonce": b64(12), "ciphertext": b64(48) } } },
//!   "entries": { "NAME": { "created": <unix s>, "updated": <unix s>,
//!                          "nonce": b64(12), "ciphertext": b64(len + 16) } } }
//! ```
//!
//! Every slot's parameters go into that slot's AAD, and magic, version and vault id into
//! every AAD, so nothing in the file can be changed, downgraded or moved without the
//! decryption failing.

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, NONCE_LEN, TAG_LEN};
use crate::error::Error;
use crate::names;

pub(crate) const MAGIC: &str = "liberty-vault";
pub(crate) const VERSION: u32 = 1;
/// The largest vault file we read: far above any real vault, far below a memory problem.
pub(crate) const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// The largest value an entry may hold.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStoreKind {
    /// A 0600 file in a 0700 directory outside the vault directory.
    File,
    /// The OS keyring (Secret Service on Linux).
    Keyring,
}

impl KeyStoreKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyStoreKind::File => "file",
            KeyStoreKind::Keyring => "keyring",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VaultFile {
    pub magic: String,
    pub version: u64,
    #[serde(with = "hex_array")]
    pub vault_id: [u8; 16],
    pub created: u64,
    pub slots: Slots,
    pub entries: BTreeMap<String, EntryRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Slots {
    pub device: DeviceSlot,
    pub recovery: RecoverySlot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceSlot {
    pub store: KeyStoreKind,
    #[serde(with = "hex_array")]
    pub machine: [u8; 8],
    #[serde(with = "b64_array")]
    pub salt: [u8; 32],
    pub passphrase: Option<PassphraseKdf>,
    /// The vault key, sealed under this slot's KEK.
    pub sealed: SealedKey,
}

/// A 32-byte key sealed with AES-256-GCM-SIV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SealedKey {
    #[serde(with = "b64_array")]
    pub nonce: [u8; NONCE_LEN],
    #[serde(with = "b64_array")]
    pub ciphertext: [u8; 32 + TAG_LEN],
}

impl Default for SealedKey {
    fn default() -> Self {
        SealedKey {
            nonce: [0; NONCE_LEN],
            ciphertext: [0; 32 + TAG_LEN],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PassphraseKdf {
    pub kdf: String,
    pub version: u32,
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
    #[serde(with = "b64_array")]
    pub salt: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecoverySlot {
    pub kdf: String,
    #[serde(with = "b64_array")]
    pub salt: [u8; 32],
    /// The vault key, sealed under this slot's KEK.
    pub sealed: SealedKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntryRecord {
    pub created: u64,
    pub updated: u64,
    #[serde(with = "b64_array")]
    pub nonce: [u8; NONCE_LEN],
    #[serde(with = "b64_vec")]
    pub ciphertext: Vec<u8>,
}

pub(crate) const PASSPHRASE_KDF: &str = "argon2id";
pub(crate) const RECOVERY_KDF: &str = "hkdf-sha256";

fn header_fields(vault_id: &[u8; 16]) -> [Vec<u8>; 3] {
    [
        MAGIC.as_bytes().to_vec(),
        VERSION.to_be_bytes().to_vec(),
        vault_id.to_vec(),
    ]
}

/// AAD of an entry: magic, version, vault id, entry name.
pub(crate) fn entry_aad(vault_id: &[u8; 16], name: &str) -> Vec<u8> {
    let [m, v, id] = header_fields(vault_id);
    crypto::encode_fields(&[&m, &v, &id, b"entry", name.as_bytes()])
}

/// AAD of the device slot: the header plus every parameter of the slot (all but the sealed
/// key itself).
pub(crate) fn device_aad(vault_id: &[u8; 16], slot: &DeviceSlot) -> Vec<u8> {
    let [m, v, id] = header_fields(vault_id);
    let pw = match &slot.passphrase {
        None => Vec::from(&b"none"[..]),
        Some(k) => crypto::encode_fields(&[
            k.kdf.as_bytes(),
            &k.version.to_be_bytes(),
            &k.m_kib.to_be_bytes(),
            &k.t.to_be_bytes(),
            &k.p.to_be_bytes(),
            &k.salt,
        ]),
    };
    crypto::encode_fields(&[
        &m,
        &v,
        &id,
        b"device",
        slot.store.as_str().as_bytes(),
        &slot.machine,
        &slot.salt,
        &pw,
    ])
}

/// AAD of the recovery slot.
pub(crate) fn recovery_aad(vault_id: &[u8; 16], slot: &RecoverySlot) -> Vec<u8> {
    let [m, v, id] = header_fields(vault_id);
    crypto::encode_fields(&[&m, &v, &id, b"recovery", slot.kdf.as_bytes(), &slot.salt])
}

impl VaultFile {
    pub fn vault_id_hex(&self) -> String {
        hex::encode(self.vault_id)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("vault file serializes");
        out.push(b'\n');
        out
    }

    /// Parses and validates a vault file's bytes; errors name `path`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<VaultFile, Error> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::corrupt(path, "the file is empty"));
        }
        if std::str::from_utf8(bytes).is_err() {
            return Err(Error::corrupt(path, "the file is not UTF-8 text"));
        }
        // First only the magic and version, so a future version gets a clear message rather
        // than a complaint about some field it added.
        #[derive(Deserialize)]
        struct Probe {
            magic: Option<String>,
            version: Option<u64>,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| Error::corrupt(path, json_reason(&e)))?;
        if probe.magic.as_deref() != Some(MAGIC) {
            return Err(Error::corrupt(
                path,
                format!("it does not carry the \"magic\": \"{MAGIC}\" marker"),
            ));
        }
        match probe.version {
            Some(v) if v == u64::from(VERSION) => {}
            Some(found) => {
                return Err(Error::UnsupportedVersion {
                    path: path.to_owned(),
                    found,
                    supported: VERSION,
                });
            }
            None => return Err(Error::corrupt(path, "it has no format version")),
        }
        let file: VaultFile =
            serde_json::from_slice(bytes).map_err(|e| Error::corrupt(path, json_reason(&e)))?;
        file.validate(path)?;
        Ok(file)
    }

    fn validate(&self, path: &Path) -> Result<(), Error> {
        if let Some(k) = &self.slots.device.passphrase
            && (k.kdf != PASSPHRASE_KDF || k.version != 0x13)
        {
            return Err(Error::corrupt(path, "unknown passphrase KDF"));
        }
        if self.slots.recovery.kdf != RECOVERY_KDF {
            return Err(Error::corrupt(path, "unknown recovery KDF"));
        }
        for (name, entry) in &self.entries {
            if names::validate(name).is_err() {
                return Err(Error::corrupt(path, "an entry has an invalid name"));
            }
            if entry.ciphertext.len() < TAG_LEN
                || entry.ciphertext.len() > MAX_VALUE_BYTES + TAG_LEN
            {
                return Err(Error::corrupt(
                    path,
                    format!("entry `{name}` has a ciphertext of impossible length"),
                ));
            }
        }
        Ok(())
    }
}

/// A JSON error without echoing file content (serde may quote whole strings), bounded.
fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "read error".to_owned(),
        Category::Syntax => "malformed JSON".to_owned(),
        Category::Eof => "the file ends too early (truncated?)".to_owned(),
        Category::Data => {
            let mut msg = e.to_string();
            // Drop serde's " at line L column C" (we add our own) and cap the length.
            if let Some(i) = msg.rfind(" at line ") {
                msg.truncate(i);
            }
            if msg.len() > 120 {
                let mut cut = 120;
                while !msg.is_char_boundary(cut) {
                    cut -= 1;
                }
                msg.truncate(cut);
                msg.push('…');
            }
            format!("unexpected content ({msg})")
        }
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

mod b64_array {
    use super::B64;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = <&str>::deserialize(d)?;
        // Base64 of N bytes is at most 4*ceil(N/3) characters; check before decoding.
        if text.len() > N.div_ceil(3) * 4 {
            return Err(D::Error::custom(format!(
                "a base64 field longer than {N} bytes"
            )));
        }
        let bytes = B64
            .decode(text)
            .map_err(|_| D::Error::custom("a field is not valid base64"))?;
        bytes
            .try_into()
            .map_err(|_| D::Error::custom(format!("a base64 field is not {N} bytes")))
    }
}

mod b64_vec {
    use super::{B64, MAX_VALUE_BYTES, TAG_LEN};
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(d)?;
        if text.len() > (MAX_VALUE_BYTES + TAG_LEN).div_ceil(3) * 4 {
            return Err(D::Error::custom("a ciphertext longer than the value limit"));
        }
        B64.decode(text)
            .map_err(|_| D::Error::custom("a field is not valid base64"))
    }
}

mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = <&str>::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(text, &mut out)
            .map_err(|_| D::Error::custom(format!("a hex field is not {N} bytes")))?;
        Ok(out)
    }
}
