//! Transcript envelope encryption.
//!
//! The customer's 32-byte account key derives an X25519 key pair. The gateway holds only the
//! public half: it makes a random data key (DEK) per epoch, wraps it to the account public key
//! with HPKE (RFC 9180, base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) and
//! seals each transcript blob with AES-256-GCM under that DEK. Only a holder of the account
//! key can unwrap a DEK, so the decrypt path ([`open`]) is compiled only into the admin tools.
//!
//! Blob layout: `"LSB1" | epoch (u64 BE) | nonce (12) | ciphertext+tag`, with AAD
//! `"LSB1" | len | agent id | seq | kind | epoch`, so a blob cannot be moved to another agent,
//! position or epoch. The stamp at that position commits to SHA-256 of the whole blob.
//! Every primitive here exists in WebCrypto, so a browser can decrypt too.

use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use hkdf::Hkdf;
use hpke::{Deserializable, Kem as _, Serializable};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::AgentId;
use crate::chain::StampKind;
use crate::secret::{ExposeSecret, SecretKey32, random_array};

type HpkeKem = hpke::kem::X25519HkdfSha256;
type HpkeKdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::AesGcm256;

const BLOB_MAGIC: &[u8; 4] = b"LSB1";
const BLOB_HEADER_LEN: usize = 4 + 8 + 12;
const WRAP_INFO: &[u8] = b"lockstock/dek-wrap/v1";

/// Failures of sealing and opening. Opening errors carry no detail on purpose: which check
/// failed is of use only to an attacker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("account public key must be 64 hex characters")]
    PublicKeyEncoding,
    #[error("account key must be 64 hex characters")]
    AccountKeyEncoding,
    #[error("wrapping the data key failed")]
    Wrap,
    #[error("sealing the transcript failed")]
    Seal,
    #[error("not a LockStock blob (bad header)")]
    BlobHeader,
    #[error("cannot decrypt: wrong account key, or the data was altered")]
    Open,
}

/// The customer's account key. Only the admin tools ever hold it.
pub struct AccountKey(SecretKey32);

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey(****)")
    }
}

impl AccountKey {
    pub fn generate() -> Self {
        Self(crate::secret::random_key())
    }

    pub fn from_hex(s: &str) -> Result<Self, SealError> {
        crate::secret::key_from_hex(s)
            .map(Self)
            .ok_or(SealError::AccountKeyEncoding)
    }

    /// The 64-hex form the operator stores in Liberty.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.expose_secret()))
    }

    fn derive(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(b"lockstock/account/v1"), self.0.expose_secret());
        let mut okm = Zeroizing::new([0u8; 32]);
        hk.expand(info, okm.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    fn private_key(&self) -> <HpkeKem as hpke::Kem>::PrivateKey {
        let bytes = self.derive(b"x25519");
        <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(bytes.as_ref())
            .expect("every 32-byte string is an X25519 private key")
    }

    pub fn public_key(&self) -> AccountPublicKey {
        let pk = HpkeKem::sk_to_pk(&self.private_key());
        let mut out = [0u8; 32];
        out.copy_from_slice(&pk.to_bytes());
        AccountPublicKey(out)
    }

    /// What the control plane stores to recognise the right key without being able to use it.
    pub fn verification_hash(&self) -> String {
        hex::encode(self.derive(b"verification").as_ref())
    }
}

/// The public half of the account key: enough to seal, useless to open.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AccountPublicKey(pub [u8; 32]);

impl fmt::Debug for AccountPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountPublicKey({})", self.key_id())
    }
}

impl AccountPublicKey {
    pub fn from_hex(s: &str) -> Result<Self, SealError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| SealError::PublicKeyEncoding)?;
        Ok(Self(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Short, stable name of this key (16 hex), recorded next to every wrapping.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.0)[..8])
    }
}

/// A data key for one agent and epoch.
pub struct Dek {
    pub epoch: u64,
    key: SecretKey32,
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dek(epoch {}, ****)", self.epoch)
    }
}

fn wrap_aad(agent: &AgentId, epoch: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(agent.as_str().len() + 8);
    aad.extend_from_slice(agent.as_str().as_bytes());
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

fn blob_aad(agent: &AgentId, seq: u64, kind: StampKind, epoch: u64) -> Vec<u8> {
    let id = agent.as_str().as_bytes();
    let mut aad = Vec::with_capacity(4 + 2 + id.len() + 8 + 1 + 8);
    aad.extend_from_slice(BLOB_MAGIC);
    aad.extend_from_slice(&(id.len() as u16).to_be_bytes());
    aad.extend_from_slice(id);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.push(match kind {
        StampKind::Request => 1,
        StampKind::Response => 2,
    });
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

impl Dek {
    pub fn generate(epoch: u64) -> Self {
        Self {
            epoch,
            key: crate::secret::random_key(),
        }
    }

    /// Wraps this key to the account public key for storage in the control plane.
    ///
    /// Costs one X25519 exchange (~100 µs): once per epoch, never per request.
    pub fn wrap(&self, to: &AccountPublicKey, agent: &AgentId) -> Result<Vec<u8>, SealError> {
        let pk = <HpkeKem as hpke::Kem>::PublicKey::from_bytes(&to.0)
            .map_err(|_| SealError::PublicKeyEncoding)?;
        let (encapped, ct) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, HpkeKem>(
            &hpke::OpModeS::Base,
            &pk,
            WRAP_INFO,
            self.key.expose_secret(),
            &wrap_aad(agent, self.epoch),
        )
        .map_err(|_| SealError::Wrap)?;
        let mut out = encapped.to_bytes().to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Seals one transcript body at a chain position.
    pub fn seal(
        &self,
        agent: &AgentId,
        seq: u64,
        kind: StampKind,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let cipher = Aes256Gcm::new(self.key.expose_secret().into());
        let nonce: [u8; 12] = random_array();
        let aad = blob_aad(agent, seq, kind, self.epoch);
        let ct = cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(BLOB_HEADER_LEN + ct.len());
        out.extend_from_slice(BLOB_MAGIC);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }
}

/// The epoch a blob was sealed in, to find its data key.
pub fn blob_epoch(blob: &[u8]) -> Result<u64, SealError> {
    if blob.len() < BLOB_HEADER_LEN + 16 || &blob[..4] != BLOB_MAGIC {
        return Err(SealError::BlobHeader);
    }
    Ok(u64::from_be_bytes(blob[4..12].try_into().expect("8 bytes")))
}

/// The decrypt path. Compiled only with the `open` feature, which only the admin tools enable.
#[cfg(feature = "open")]
pub mod open {
    use super::*;
    use crate::secret::SecretBox;

    const ENCAPPED_LEN: usize = 32;

    /// Present in every binary that links the decrypt path, and in no other: a test looks for it.
    pub static DECRYPT_PATH_MARKER: &str = "lockstock:transcript-decrypt-path:v1";

    impl AccountKey {
        /// Unwraps a data key wrapped by [`Dek::wrap`].
        pub fn unwrap_dek(
            &self,
            agent: &AgentId,
            epoch: u64,
            wrapped: &[u8],
        ) -> Result<Dek, SealError> {
            std::hint::black_box(DECRYPT_PATH_MARKER);
            if wrapped.len() <= ENCAPPED_LEN {
                return Err(SealError::Open);
            }
            let (enc, ct) = wrapped.split_at(ENCAPPED_LEN);
            let encapped = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(enc)
                .map_err(|_| SealError::Open)?;
            let plain = Zeroizing::new(
                hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(
                    &hpke::OpModeR::Base,
                    &self.private_key(),
                    &encapped,
                    WRAP_INFO,
                    ct,
                    &wrap_aad(agent, epoch),
                )
                .map_err(|_| SealError::Open)?,
            );
            let key: [u8; 32] = plain.as_slice().try_into().map_err(|_| SealError::Open)?;
            Ok(Dek {
                epoch,
                key: SecretBox::new(Box::new(key)),
            })
        }
    }

    impl Dek {
        /// Opens a blob sealed by [`Dek::seal`] at the same position.
        pub fn open(
            &self,
            agent: &AgentId,
            seq: u64,
            kind: StampKind,
            blob: &[u8],
        ) -> Result<Zeroizing<Vec<u8>>, SealError> {
            if blob_epoch(blob)? != self.epoch {
                return Err(SealError::Open);
            }
            let nonce: [u8; 12] = blob[12..24].try_into().expect("12 bytes");
            let cipher = Aes256Gcm::new(self.key.expose_secret().into());
            let aad = blob_aad(agent, seq, kind, self.epoch);
            cipher
                .decrypt(
                    &nonce.into(),
                    Payload {
                        msg: &blob[BLOB_HEADER_LEN..],
                        aad: &aad,
                    },
                )
                .map(Zeroizing::new)
                .map_err(|_| SealError::Open)
        }
    }
}

#[cfg(all(test, feature = "open"))]
mod tests {
    use super::*;

    fn agent() -> AgentId {
        "agent_01020304_seal".parse().unwrap()
    }

    #[test]
    fn round_trip_through_wrap_and_seal() {
        let account = AccountKey::generate();
        let dek = Dek::generate(42);
        let wrapped = dek.wrap(&account.public_key(), &agent()).unwrap();
        let blob = dek
            .seal(&agent(), 7, StampKind::Request, b"{\"prompt\":\"hi\"}")
            .unwrap();
        assert_eq!(blob_epoch(&blob).unwrap(), 42);

        let dek2 = account.unwrap_dek(&agent(), 42, &wrapped).unwrap();
        let plain = dek2.open(&agent(), 7, StampKind::Request, &blob).unwrap();
        assert_eq!(plain.as_slice(), b"{\"prompt\":\"hi\"}");
    }

    #[test]
    fn moved_or_altered_blobs_do_not_open() {
        let account = AccountKey::generate();
        let dek = Dek::generate(1);
        let blob = dek
            .seal(&agent(), 7, StampKind::Response, b"secret")
            .unwrap();
        assert_eq!(
            dek.open(&agent(), 8, StampKind::Response, &blob)
                .unwrap_err(),
            SealError::Open
        );
        assert_eq!(
            dek.open(&agent(), 7, StampKind::Request, &blob)
                .unwrap_err(),
            SealError::Open
        );
        let other: AgentId = "agent_01020304_other".parse().unwrap();
        assert!(dek.open(&other, 7, StampKind::Response, &blob).is_err());
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x40;
            assert!(
                dek.open(&agent(), 7, StampKind::Response, &bad).is_err(),
                "byte {i}"
            );
        }
        assert_eq!(blob_epoch(&blob[..10]).unwrap_err(), SealError::BlobHeader);

        let wrapped = dek.wrap(&account.public_key(), &agent()).unwrap();
        let wrong = AccountKey::generate();
        assert_eq!(
            wrong.unwrap_dek(&agent(), 1, &wrapped).unwrap_err(),
            SealError::Open
        );
        assert!(account.unwrap_dek(&agent(), 2, &wrapped).is_err());
        assert!(account.unwrap_dek(&agent(), 1, &wrapped[..20]).is_err());
    }

    #[test]
    fn account_key_parts_are_stable_and_distinct() {
        let k = AccountKey::from_hex(&"5a".repeat(32)).unwrap();
        let k2 = AccountKey::from_hex(&"5a".repeat(32)).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        assert_eq!(k.verification_hash(), k2.verification_hash());
        assert_ne!(k.verification_hash(), k.public_key().to_hex());
        assert_eq!(k.public_key().key_id().len(), 16);
        assert_eq!(format!("{k:?}"), "AccountKey(****)");
        assert!(AccountKey::from_hex("nothex").is_err());
    }
}
