//! The primitives: AES-256-GCM-SIV, HKDF-SHA256, Argon2id, SHA-256, randomness.

use aes_gcm_siv::Aes256GcmSiv;
use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::secret::Key32;

pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;

/// Argon2id parameters for the passphrase. The floor (OWASP's minimum) is enforced on files we
/// read as well as on files we write; the ceiling keeps a hostile file from asking for
/// unbounded memory or time.
pub(crate) const ARGON2_M_KIB: u32 = 19 * 1024;
pub(crate) const ARGON2_T: u32 = 2;
pub(crate) const ARGON2_P: u32 = 1;
pub(crate) const ARGON2_MAX_M_KIB: u32 = 1024 * 1024;
pub(crate) const ARGON2_MAX_T: u32 = 16;
pub(crate) const ARGON2_MAX_P: u32 = 16;

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(buf).map_err(|_| Error::Random)
}

pub(crate) fn random_array<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

/// Length-prefixed concatenation: an unambiguous encoding of several fields for AAD and HKDF
/// info, so that no two different field lists encode to the same bytes.
pub(crate) fn encode_fields(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 4).sum());
    for f in fields {
        let len = u32::try_from(f.len()).expect("field shorter than 4 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(encode_fields(parts));
    h.finalize().into()
}

/// HKDF-SHA256 to a 32-byte key.
pub(crate) fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8]) -> Key32 {
    let mut out = Key32::zero();
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out.0.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// Argon2id of the passphrase; parameters are checked against the floor and ceiling first.
pub(crate) fn argon2id(
    passphrase: &[u8],
    salt: &[u8],
    m_kib: u32,
    t: u32,
    p: u32,
) -> Result<Key32, String> {
    if !(ARGON2_M_KIB..=ARGON2_MAX_M_KIB).contains(&m_kib)
        || !(ARGON2_T..=ARGON2_MAX_T).contains(&t)
        || !(ARGON2_P..=ARGON2_MAX_P).contains(&p)
    {
        return Err(format!(
            "Argon2id parameters m={m_kib} KiB, t={t}, p={p} are outside the accepted range"
        ));
    }
    let params = argon2::Params::new(m_kib, t, p, Some(32)).map_err(|e| e.to_string())?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Key32::zero();
    argon
        .hash_password_into(passphrase, salt, out.0.as_mut())
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Encrypts `plaintext` under `key` with a fresh random nonce.
pub(crate) fn seal(
    key: &Key32,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; NONCE_LEN], Vec<u8>), Error> {
    let nonce: [u8; NONCE_LEN] = random_array()?;
    let cipher = Aes256GcmSiv::new(&(*key.0).into());
    // Reserve room for the tag up front so the buffer never reallocates and leaves a copy of
    // the plaintext behind in freed memory.
    let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
    buf.extend_from_slice(plaintext);
    cipher
        .encrypt_in_place(&nonce.into(), aad, &mut *buf)
        .map_err(|_| Error::Random)?;
    Ok((nonce, std::mem::take(&mut *buf)))
}

/// Decrypts and verifies; `None` when the tag does not verify.
pub(crate) fn open(
    key: &Key32,
    aad: &[u8],
    nonce: &[u8; NONCE_LEN],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let cipher = Aes256GcmSiv::new(&(*key.0).into());
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_in_place(&(*nonce).into(), aad, &mut *buf)
        .ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binds() {
        let key = Key32::random().unwrap();
        let (nonce, ct) = seal(&key, b"aad-1", b"hello").unwrap();
        assert_eq!(ct.len(), 5 + TAG_LEN);
        assert_eq!(
            open(&key, b"aad-1", &nonce, &ct).unwrap().as_slice(),
            b"hello"
        );
        assert!(open(&key, b"aad-2", &nonce, &ct).is_none());
        let other = Key32::random().unwrap();
        assert!(open(&other, b"aad-1", &nonce, &ct).is_none());
        let (nonce2, ct2) = seal(&key, b"aad-1", b"hello").unwrap();
        assert_ne!((nonce, &ct), (nonce2, &ct2), "a fresh nonce per write");
    }

    #[test]
    fn field_encoding_is_unambiguous() {
        assert_ne!(encode_fields(&[b"ab", b"c"]), encode_fields(&[b"a", b"bc"]));
    }

    #[test]
    fn argon2_refuses_weak_or_hostile_parameters() {
        let salt = [7u8; 16];
        assert!(argon2id(b"pw", &salt, 8, 2, 1).is_err());
        assert!(argon2id(b"pw", &salt, ARGON2_M_KIB, 1, 1).is_err());
        assert!(argon2id(b"pw", &salt, u32::MAX, 2, 1).is_err());
        assert!(argon2id(b"pw", &salt, ARGON2_M_KIB, 2, 1000).is_err());
    }
}
