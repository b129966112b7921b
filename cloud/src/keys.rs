//! API keys and genesis tokens: generated here, stored only as SHA-256 hashes, compared in
//! constant time.

use lockstock::api::{ADMIN_KEY_PREFIX, GATEWAY_KEY_PREFIX};
use lockstock::secret::random_array;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of genesis tokens (single-use agent activation secrets).
pub const GENESIS_TOKEN_PREFIX: &str = "lsg_";

/// What a request's credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Everything.
    Admin,
    /// Health, activate, stamps, blobs, new key wrappings, policy.
    Gateway,
}

/// SHA-256 of a secret, the only form in which it is stored.
pub(crate) fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn new_secret(prefix: &str) -> SecretString {
    let bytes: [u8; 32] = random_array();
    SecretString::from(format!("{prefix}{}", hex::encode(bytes)))
}

pub(crate) fn new_admin_key() -> SecretString {
    new_secret(ADMIN_KEY_PREFIX)
}

pub(crate) fn new_gateway_key() -> SecretString {
    new_secret(GATEWAY_KEY_PREFIX)
}

pub(crate) fn new_genesis_token() -> SecretString {
    new_secret(GENESIS_TOKEN_PREFIX)
}

pub(crate) fn new_account_id() -> String {
    format!("acct_{}", hex::encode(random_array::<8>()))
}

/// Constant-time equality of two hashes.
pub(crate) fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// The stored hashes of the account's two keys.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KeyHashes {
    pub admin: [u8; 32],
    pub gateway: [u8; 32],
}

impl KeyHashes {
    /// Which role `presented` holds, if any. Both hashes are always compared.
    pub fn role(&self, presented: &str) -> Option<Role> {
        let h = hash_secret(presented);
        let admin = h.ct_eq(&self.admin);
        let gateway = h.ct_eq(&self.gateway);
        if bool::from(admin) {
            Some(Role::Admin)
        } else if bool::from(gateway) {
            Some(Role::Gateway)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn keys_have_their_prefix_and_64_hex() {
        let k = new_admin_key();
        let rest = k.expose_secret().strip_prefix("lsk_admin_").unwrap();
        assert_eq!(rest.len(), 64);
        assert!(rest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(
            new_gateway_key()
                .expose_secret()
                .starts_with("lsk_gateway_")
        );
        assert_ne!(
            new_genesis_token().expose_secret(),
            new_genesis_token().expose_secret()
        );
    }

    #[test]
    fn roles_come_from_hashes() {
        let admin = new_admin_key();
        let gateway = new_gateway_key();
        let hashes = KeyHashes {
            admin: hash_secret(admin.expose_secret()),
            gateway: hash_secret(gateway.expose_secret()),
        };
        assert_eq!(hashes.role(admin.expose_secret()), Some(Role::Admin));
        assert_eq!(hashes.role(gateway.expose_secret()), Some(Role::Gateway));
        assert_eq!(hashes.role("lsk_admin_00"), None);
        assert_eq!(hashes.role(""), None);
    }
}
