//! Stamps: the signed, hash-chained records of an agent's requests and responses.
//!
//! A stamp's identity is its canonical byte encoding (fixed field order, big-endian integers,
//! length-prefixed strings). Its hash is SHA-256 over that encoding, and the agent's Ed25519
//! key signs the same bytes, so anyone with the agent's public key can re-verify a chain
//! offline without trusting the control plane or any JSON library.
//!
//! A batch of consecutive stamps sent in one call carries one signature, on its last stamp
//! ([`sign_batch`]): each stamp's hash is in the next one's `prev_hash`, so that signature
//! commits to every stamp of the batch exactly as much as one signature each would (forging
//! any of them means breaking SHA-256 or Ed25519), at a fraction of the cost on both ends.
//! An unsigned stamp counts only once a validly signed stamp that extends it is seen.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AgentId;

/// Format version carried inside every stamp.
pub const STAMP_VERSION: u8 = 1;
const STAMP_MAGIC: &[u8; 8] = b"LSSTAMP1";
const GENESIS_MAGIC: &[u8; 10] = b"LSGENESIS1";
/// Longest model name kept in a stamp; longer names are cut (on a char boundary).
pub const MAX_MODEL_LEN: usize = 128;

/// A SHA-256 digest, shown and sent as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        self.hex_str(&mut [0; 64]).to_owned()
    }

    /// The hex, written into `buf`: every stamp on the wire carries several, so they are
    /// written and read without an allocation each.
    fn hex_str<'b>(&self, buf: &'b mut [u8; 64]) -> &'b str {
        hex::encode_to_slice(self.0, buf).expect("64 bytes hold 32 in hex");
        std::str::from_utf8(buf).expect("hex is ASCII")
    }

    fn from_hex(s: &str) -> Result<Self, &'static str> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| "expected 64 hex characters")?;
        Ok(Self(out))
    }
}

impl Serialize for Hash32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex_str(&mut [0; 64]))
    }
}

impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = Hash32;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 hex characters")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Hash32, E> {
                Hash32::from_hex(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Hex)
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The hash every chain starts from: bound to the agent, so chains cannot be spliced.
pub fn genesis_hash(agent: &AgentId) -> Hash32 {
    let mut h = Sha256::new();
    h.update(GENESIS_MAGIC);
    h.update(agent.as_str().as_bytes());
    Hash32(h.finalize().into())
}

/// What a stamp records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StampKind {
    /// Before forwarding: the prompt's token estimate and the output cap asked for.
    Request,
    /// After the response: the tokens actually used; settles the request's reservation.
    Response,
}

impl StampKind {
    fn code(self) -> u8 {
        match self {
            Self::Request => 1,
            Self::Response => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
        }
    }
}

/// Flag bits carried in a stamp.
pub mod flags {
    /// Request: the client asked for no output cap.
    pub const UNCAPPED: u8 = 1 << 0;
    /// Response: the provider reported no usage; the counts are estimates.
    pub const ESTIMATED: u8 = 1 << 1;
    /// Response: the request never reached the provider (a verdict or an error stopped it).
    pub const NOT_FORWARDED: u8 = 1 << 2;
    /// Response: the client went away before the stream ended; counts are what was seen.
    pub const CLIENT_GONE: u8 = 1 << 3;
    /// Response: the sealed transcript was cut at the size limit.
    pub const TRUNCATED: u8 = 1 << 4;
    /// Response: the provider's stream broke before it finished.
    pub const UPSTREAM_FAILED: u8 = 1 << 5;
    pub const ALL: u8 = 0b0011_1111;
}

/// One link of an agent's chain, before signing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub version: u8,
    pub agent_id: AgentId,
    /// 1 for the first stamp; strictly consecutive.
    pub seq: u64,
    pub prev_hash: Hash32,
    pub kind: StampKind,
    /// Milliseconds since the Unix epoch, by the gateway's clock.
    pub time_ms: u64,
    pub model: String,
    /// Request: prompt estimate. Response: input tokens used.
    pub tokens_in: u64,
    /// Request: output cap asked for (see [`flags::UNCAPPED`]). Response: output tokens used.
    pub tokens_out: u64,
    /// Response: the seq of the request stamp it settles. Request: 0.
    pub ref_seq: u64,
    pub flags: u8,
    /// Response: the provider's HTTP status (0 when none). Request: 0.
    pub status: u16,
    /// SHA-256 of the sealed transcript blob, when one was made.
    pub blob_hash: Option<Hash32>,
}

/// Why a stamp is not acceptable, independent of any ledger state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    #[error("unsupported stamp version {0}")]
    Version(u8),
    #[error("stamp seq must start at 1")]
    ZeroSeq,
    #[error("unknown stamp flags {0:#04x}")]
    Flags(u8),
    #[error("model name longer than {MAX_MODEL_LEN} bytes")]
    ModelTooLong,
    #[error("a request stamp carries no ref_seq or status")]
    RequestFields,
    #[error("a response stamp must refer to an earlier request")]
    ResponseRef,
    #[error("signature is not valid for this agent's key")]
    Signature,
    #[error("signature is not 64 bytes of base64")]
    SignatureEncoding,
    #[error("the stamp carries no signature and no validly signed stamp after it extends it")]
    Uncovered,
}

impl Stamp {
    /// The canonical encoding that is hashed and signed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.agent_id.as_str().len() + self.model.len());
        out.extend_from_slice(STAMP_MAGIC);
        out.push(self.version);
        put_str(&mut out, self.agent_id.as_str());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.prev_hash.0);
        out.push(self.kind.code());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        put_str(&mut out, &self.model);
        out.extend_from_slice(&self.tokens_in.to_be_bytes());
        out.extend_from_slice(&self.tokens_out.to_be_bytes());
        out.extend_from_slice(&self.ref_seq.to_be_bytes());
        out.push(self.flags);
        out.extend_from_slice(&self.status.to_be_bytes());
        match &self.blob_hash {
            Some(h) => {
                out.push(1);
                out.extend_from_slice(&h.0);
            }
            None => out.push(0),
        }
        out
    }

    pub fn hash(&self) -> Hash32 {
        Hash32::of(&self.canonical_bytes())
    }

    /// Structural checks that need no ledger state.
    pub fn check(&self) -> Result<(), StampError> {
        if self.version != STAMP_VERSION {
            return Err(StampError::Version(self.version));
        }
        if self.seq == 0 {
            return Err(StampError::ZeroSeq);
        }
        if self.flags & !flags::ALL != 0 {
            return Err(StampError::Flags(self.flags));
        }
        if self.model.len() > MAX_MODEL_LEN {
            return Err(StampError::ModelTooLong);
        }
        match self.kind {
            StampKind::Request if self.ref_seq != 0 || self.status != 0 => {
                Err(StampError::RequestFields)
            }
            StampKind::Response if self.ref_seq == 0 || self.ref_seq >= self.seq => {
                Err(StampError::ResponseRef)
            }
            _ => Ok(()),
        }
    }

    /// Signs the canonical bytes with the agent's key.
    pub fn sign(self, key: &SigningKey) -> SignedStamp {
        let signature = key.sign(&self.canonical_bytes()).to_bytes();
        SignedStamp {
            stamp: self,
            signature: Some(Sig(signature)),
        }
    }

    /// Leaves the stamp for a later stamp's signature to cover (see [`sign_batch`]).
    pub fn unsigned(self) -> SignedStamp {
        SignedStamp {
            stamp: self,
            signature: None,
        }
    }
}

/// Signs a batch of consecutive stamps of one chain (each one's `prev_hash` the hash of the
/// one before) with one signature, on the last stamp.
pub fn sign_batch(stamps: Vec<Stamp>, key: &SigningKey) -> Vec<SignedStamp> {
    let last = stamps.len().saturating_sub(1);
    stamps
        .into_iter()
        .enumerate()
        .map(|(i, s)| if i == last { s.sign(key) } else { s.unsigned() })
        .collect()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

/// Cuts a model name to [`MAX_MODEL_LEN`] bytes on a char boundary.
pub fn clip_model(model: &str) -> String {
    if model.len() <= MAX_MODEL_LEN {
        return model.to_owned();
    }
    let mut end = MAX_MODEL_LEN;
    while !model.is_char_boundary(end) {
        end -= 1;
    }
    model[..end].to_owned()
}

/// An Ed25519 signature, sent as base64.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sig(pub [u8; 64]);

impl TryFrom<String> for Sig {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(|_| StampError::SignatureEncoding.to_string())?;
        let arr: [u8; 64] = bytes
            .try_into()
            .map_err(|_| StampError::SignatureEncoding.to_string())?;
        Ok(Self(arr))
    }
}

impl From<Sig> for String {
    fn from(s: Sig) -> Self {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s.0)
    }
}

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig({}…)", hex::encode(&self.0[..6]))
    }
}

/// A stamp with the agent's signature over its canonical bytes, or with none when a later
/// stamp of its batch carries the signature that covers it (see [`sign_batch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedStamp {
    #[serde(flatten)]
    pub stamp: Stamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Sig>,
}

impl SignedStamp {
    /// Checks structure and the stamp's own signature against the agent's public key; an
    /// unsigned stamp is [`StampError::Uncovered`] here, since only a later stamp can vouch for it.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Hash32, StampError> {
        self.stamp.check()?;
        let sig = self.signature.ok_or(StampError::Uncovered)?;
        let bytes = self.stamp.canonical_bytes();
        key.verify(&bytes, &Signature::from_bytes(&sig.0))
            .map_err(|_| StampError::Signature)?;
        Ok(Hash32::of(&bytes))
    }

    /// Checks structure only and returns the hash: what an unsigned stamp can show by itself
    /// (a signed stamp further on must still cover it).
    pub fn checked_hash(&self) -> Result<Hash32, StampError> {
        self.stamp.check()?;
        Ok(self.stamp.hash())
    }
}

/// Verifies many stamps at once, in the order they were sent (Ed25519 batch verification is
/// roughly twice as fast per signature; on failure it falls back to one by one so the caller
/// learns which ones failed). An unsigned stamp is good when the next item extends it (same
/// agent and key, next seq, `prev_hash` its hash) and is good itself.
pub fn verify_many(items: &[(&SignedStamp, &VerifyingKey)]) -> Vec<Result<Hash32, StampError>> {
    verify_calls(items, &[])
}

/// [`verify_many`] over the stamps of several calls at once: `starts` (ascending) are the
/// indices where another call's stamps begin. A signature covers stamps of its own call only,
/// so a call is appended or refused on its own merits.
pub fn verify_calls(
    items: &[(&SignedStamp, &VerifyingKey)],
    starts: &[usize],
) -> Vec<Result<Hash32, StampError>> {
    let mut out = Vec::with_capacity(items.len());
    let mut bytes = Vec::with_capacity(items.len());
    for (signed, _) in items {
        match signed.stamp.check() {
            Ok(()) => {
                let b = signed.stamp.canonical_bytes();
                out.push(Ok(Hash32::of(&b)));
                bytes.push(b);
            }
            Err(e) => {
                out.push(Err(e));
                bytes.push(Vec::new());
            }
        }
    }
    let signed: Vec<(usize, Signature)> = (0..items.len())
        .filter(|&i| out[i].is_ok())
        .filter_map(|i| Some((i, Signature::from_bytes(&items[i].0.signature?.0))))
        .collect();
    let batch_ok = signed.len() > 1 && {
        let msgs: Vec<&[u8]> = signed.iter().map(|&(i, _)| bytes[i].as_slice()).collect();
        let sigs: Vec<Signature> = signed.iter().map(|&(_, s)| s).collect();
        let keys: Vec<VerifyingKey> = signed.iter().map(|&(i, _)| *items[i].1).collect();
        ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok()
    };
    if !batch_ok {
        for &(i, sig) in &signed {
            if items[i].1.verify(&bytes[i], &sig).is_err() {
                out[i] = Err(StampError::Signature);
            }
        }
    }
    for i in (0..items.len()).rev() {
        let (stamp, key) = items[i];
        let Ok(hash) = out[i] else { continue };
        if stamp.signature.is_some() {
            continue;
        }
        let same_call = starts.binary_search(&(i + 1)).is_err();
        let covered = same_call
            && items.get(i + 1).is_some_and(|&(next, next_key)| {
                out[i + 1].is_ok() && next_key == key && extends(&next.stamp, &stamp.stamp, hash)
            });
        if !covered {
            out[i] = Err(StampError::Uncovered);
        }
    }
    out
}

/// True when `next` is the link right after `prev` (whose hash is `prev_hash`) in one chain.
fn extends(next: &Stamp, prev: &Stamp, prev_hash: Hash32) -> bool {
    next.agent_id == prev.agent_id && next.seq == prev.seq + 1 && next.prev_hash == prev_hash
}

/// The last link of a chain: where the next stamp must attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash32,
}

impl Head {
    pub fn genesis(agent: &AgentId) -> Self {
        Self {
            seq: 0,
            hash: genesis_hash(agent),
        }
    }
}

/// Why a chain does not verify, naming the first seq that fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("seq {seq}: expected seq {expected}")]
    Gap { seq: u64, expected: u64 },
    #[error("seq {seq}: prev_hash does not match the hash of seq {}", seq - 1)]
    Link { seq: u64 },
    #[error("seq {seq}: {source}")]
    Stamp { seq: u64, source: StampError },
    #[error("seq {seq}: stamp belongs to {found}, not this agent")]
    Agent { seq: u64, found: AgentId },
    #[error("seq {seq}: recorded hash does not match the stamp's contents")]
    Hash { seq: u64 },
}

/// Walks a chain in order from `start` (the genesis head, or a trusted earlier head).
///
/// `recorded_hash`, when given, is the hash the ledger stored for each stamp; it must match.
///
/// Unsigned stamps are accepted once a validly signed stamp extends them; a chain that ends on
/// unsigned stamps fails, naming the first of them.
pub fn verify_chain<'a>(
    agent: &AgentId,
    key: &VerifyingKey,
    start: Head,
    stamps: impl IntoIterator<Item = (&'a SignedStamp, Option<Hash32>)>,
) -> Result<Head, ChainError> {
    let mut head = start;
    let mut uncovered: Option<u64> = None;
    for (signed, recorded) in stamps {
        let s = &signed.stamp;
        if &s.agent_id != agent {
            return Err(ChainError::Agent {
                seq: s.seq,
                found: s.agent_id.clone(),
            });
        }
        if s.seq != head.seq + 1 {
            return Err(ChainError::Gap {
                seq: s.seq,
                expected: head.seq + 1,
            });
        }
        if s.prev_hash != head.hash {
            return Err(ChainError::Link { seq: s.seq });
        }
        let hash = if signed.signature.is_some() {
            uncovered = None;
            signed.verify(key)
        } else {
            uncovered.get_or_insert(s.seq);
            signed.checked_hash()
        }
        .map_err(|source| ChainError::Stamp { seq: s.seq, source })?;
        if recorded.is_some_and(|r| r != hash) {
            return Err(ChainError::Hash { seq: s.seq });
        }
        head = Head { seq: s.seq, hash };
    }
    match uncovered {
        Some(seq) => Err(ChainError::Stamp {
            seq,
            source: StampError::Uncovered,
        }),
        None => Ok(head),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentId {
        "agent_0a0b0c0d_test".parse().unwrap()
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn request(seq: u64, prev: Hash32) -> Stamp {
        Stamp {
            version: STAMP_VERSION,
            agent_id: agent(),
            seq,
            prev_hash: prev,
            kind: StampKind::Request,
            time_ms: 1_700_000_000_000,
            model: "gpt-4o".into(),
            tokens_in: 12,
            tokens_out: 100,
            ref_seq: 0,
            flags: 0,
            status: 0,
            blob_hash: None,
        }
    }

    fn chain(n: u64) -> Vec<SignedStamp> {
        let mut head = Head::genesis(&agent());
        let mut out = Vec::new();
        for seq in 1..=n {
            let signed = request(seq, head.hash).sign(&key());
            head = Head {
                seq,
                hash: signed.stamp.hash(),
            };
            out.push(signed);
        }
        out
    }

    #[test]
    fn hashes_travel_as_lowercase_hex_and_anything_else_is_refused() {
        let h = Hash32::of(b"x");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", h.to_hex()));
        assert_eq!(h.to_hex(), hex::encode(h.0));
        assert_eq!(serde_json::from_str::<Hash32>(&json).unwrap(), h);
        // Upper case is hex too; escapes are decoded before the check.
        let upper = json.to_uppercase();
        assert_eq!(serde_json::from_str::<Hash32>(&upper).unwrap(), h);
        let escaped = format!("\"\\u00{:02x}{}", json.as_bytes()[1], &json[2..]);
        assert_eq!(serde_json::from_str::<Hash32>(&escaped).unwrap(), h);
        for bad in [
            "\"\"".to_owned(),
            format!("\"{}\"", &h.to_hex()[..62]),
            format!("\"{}00\"", h.to_hex()),
            format!("\"{}zz\"", &h.to_hex()[..62]),
            format!("\"{}é\"", &h.to_hex()[..62]),
            "7".to_owned(),
            "null".to_owned(),
            "[1,2]".to_owned(),
        ] {
            let e = serde_json::from_str::<Hash32>(&bad).unwrap_err();
            assert!(e.to_string().contains("64 hex"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = request(1, Hash32::default());
        let mut variants = vec![];
        let mut s = base.clone();
        s.seq = 2;
        variants.push(s);
        let mut s = base.clone();
        s.model = "gpt-4o-mini".into();
        variants.push(s);
        let mut s = base.clone();
        s.tokens_in = 13;
        variants.push(s);
        let mut s = base.clone();
        s.tokens_out = 99;
        variants.push(s);
        let mut s = base.clone();
        s.flags = flags::ESTIMATED;
        variants.push(s);
        let mut s = base.clone();
        s.blob_hash = Some(Hash32::default());
        variants.push(s);
        let mut s = base.clone();
        s.kind = StampKind::Response;
        variants.push(s);
        let mut s = base.clone();
        s.time_ms += 1;
        variants.push(s);
        for v in variants {
            assert_ne!(v.hash(), base.hash(), "{v:?}");
        }
    }

    #[test]
    fn length_prefixes_prevent_field_shifting() {
        let mut a = request(1, Hash32::default());
        a.model = "ab".into();
        let mut b = a.clone();
        b.model = "a".into();
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
    }

    #[test]
    fn chains_verify_and_tampering_is_named() {
        let stamps = chain(5);
        let vk = key().verifying_key();
        let head = verify_chain(
            &agent(),
            &vk,
            Head::genesis(&agent()),
            stamps.iter().map(|s| (s, None)),
        )
        .unwrap();
        assert_eq!(head.seq, 5);

        let mut tampered = stamps.clone();
        tampered[2].stamp.tokens_out = 1;
        let err = verify_chain(
            &agent(),
            &vk,
            Head::genesis(&agent()),
            tampered.iter().map(|s| (s, None)),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::Stamp {
                    seq: 3,
                    source: StampError::Signature
                }
            ),
            "{err}"
        );

        let mut dropped = stamps.clone();
        dropped.remove(1);
        let err = verify_chain(
            &agent(),
            &vk,
            Head::genesis(&agent()),
            dropped.iter().map(|s| (s, None)),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ChainError::Gap {
                seq: 3,
                expected: 2
            }
        );
    }

    #[test]
    fn batch_verification_names_the_bad_one() {
        let stamps = chain(4);
        let vk = key().verifying_key();
        let mut bad = stamps.clone();
        bad[1].signature.as_mut().unwrap().0[0] ^= 1;
        let items: Vec<_> = bad.iter().map(|s| (s, &vk)).collect();
        let results = verify_many(&items);
        assert!(results[0].is_ok() && results[2].is_ok() && results[3].is_ok());
        assert_eq!(results[1], Err(StampError::Signature));
    }

    /// Stamps 1..=n in batches of `size`, each batch signed once, as the gateway sends them.
    fn batched(n: u64, size: usize) -> Vec<SignedStamp> {
        let mut head = Head::genesis(&agent());
        let mut stamps = Vec::new();
        for seq in 1..=n {
            let s = request(seq, head.hash);
            head = Head {
                seq,
                hash: s.hash(),
            };
            stamps.push(s);
        }
        let mut out = Vec::new();
        while !stamps.is_empty() {
            let rest = stamps.split_off(size.min(stamps.len()));
            out.extend(sign_batch(std::mem::replace(&mut stamps, rest), &key()));
        }
        out
    }

    fn walk(stamps: &[SignedStamp]) -> Result<Head, ChainError> {
        verify_chain(
            &agent(),
            &key().verifying_key(),
            Head::genesis(&agent()),
            stamps.iter().map(|s| (s, None)),
        )
    }

    #[test]
    fn a_batch_carries_one_signature_that_covers_every_stamp_in_it() {
        let stamps = batched(7, 3);
        let signed: Vec<u64> = stamps
            .iter()
            .filter(|s| s.signature.is_some())
            .map(|s| s.stamp.seq)
            .collect();
        assert_eq!(signed, [3, 6, 7]);
        assert_eq!(walk(&stamps).unwrap().seq, 7);
        let vk = key().verifying_key();
        let items: Vec<_> = stamps.iter().map(|s| (s, &vk)).collect();
        assert!(verify_many(&items).iter().all(Result::is_ok));
        let json = serde_json::to_value(&stamps[0]).unwrap();
        assert!(json.get("signature").is_none(), "{json}");
        let back: SignedStamp = serde_json::from_value(json).unwrap();
        assert_eq!(back, stamps[0]);
    }

    #[test]
    fn an_unsigned_stamp_without_a_good_signature_after_it_is_refused() {
        let vk = key().verifying_key();
        let stamps = batched(3, 3);
        let check = |stamps: &[SignedStamp]| {
            let items: Vec<_> = stamps.iter().map(|s| (s, &vk)).collect();
            verify_many(&items)
        };

        // The batch cut short: nothing signs the first two.
        let cut = check(&stamps[..2]);
        assert_eq!(cut, vec![Err(StampError::Uncovered); 2]);
        let err = walk(&stamps[..2]).unwrap_err();
        assert_eq!(
            err,
            ChainError::Stamp {
                seq: 1,
                source: StampError::Uncovered
            }
        );

        // An altered unsigned stamp no longer matches the prev_hash the signature covers.
        let mut altered = stamps.clone();
        altered[1].stamp.tokens_in += 1;
        let results = check(&altered);
        assert_eq!(results[1], Err(StampError::Uncovered));
        assert_eq!(
            results[0],
            Err(StampError::Uncovered),
            "its cover is gone too"
        );
        assert!(results[2].is_ok());
        assert_eq!(walk(&altered).unwrap_err(), ChainError::Link { seq: 3 });

        // A bad signature takes down every stamp it was to cover.
        let mut forged = stamps.clone();
        forged[2].signature.as_mut().unwrap().0[5] ^= 1;
        assert_eq!(
            check(&forged),
            vec![
                Err(StampError::Uncovered),
                Err(StampError::Uncovered),
                Err(StampError::Signature)
            ]
        );

        // Another agent's signed stamp does not cover this agent's unsigned one.
        let other_key = SigningKey::from_bytes(&[9u8; 32]);
        let mut crossed = stamps.clone();
        crossed[2] = crossed[2].stamp.clone().sign(&other_key);
        let other_vk = other_key.verifying_key();
        let items = vec![
            (&crossed[0], &vk),
            (&crossed[1], &vk),
            (&crossed[2], &other_vk),
        ];
        let results = verify_many(&items);
        assert_eq!(results[1], Err(StampError::Uncovered));
        assert!(results[2].is_ok());

        // A signature covers the stamps of its own call only.
        let items: Vec<_> = stamps.iter().map(|s| (s, &vk)).collect();
        let split = verify_calls(&items, &[2]);
        assert_eq!(
            split[..2],
            [Err(StampError::Uncovered), Err(StampError::Uncovered)]
        );
        assert!(split[2].is_ok());
        assert!(verify_calls(&items, &[0, 3]).iter().all(Result::is_ok));
    }

    #[test]
    fn json_round_trip_keeps_the_signature_valid() {
        let signed = chain(1).remove(0);
        let json = serde_json::to_string(&signed).unwrap();
        let back: SignedStamp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, signed);
        back.verify(&key().verifying_key()).unwrap();
    }

    #[test]
    fn structural_checks() {
        let mut s = request(1, Hash32::default());
        s.ref_seq = 1;
        assert_eq!(s.check(), Err(StampError::RequestFields));
        let mut s = request(2, Hash32::default());
        s.kind = StampKind::Response;
        s.ref_seq = 2;
        assert_eq!(s.check(), Err(StampError::ResponseRef));
        let mut s = request(1, Hash32::default());
        s.flags = 0x80;
        assert_eq!(s.check(), Err(StampError::Flags(0x80)));
        let mut s = request(0, Hash32::default());
        s.seq = 0;
        assert_eq!(s.check(), Err(StampError::ZeroSeq));
        assert_eq!(clip_model(&"é".repeat(100)).len(), 128);
    }
}
