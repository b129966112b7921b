//! Reading one agent's ledger from the control plane and checking it stamp by stamp, the way
//! [`lockstock::chain::verify_chain`] does, except that a problem does not stop the walk: every
//! stamp gets its own list of problems, so a report can name each one precisely.

use std::fmt;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use lockstock::AgentId;
use lockstock::api::{StampPage, StampRecord, Verdict};
use lockstock::chain::{Hash32, Head, SignedStamp, StampError, StampKind, flags, verify_many};
use lockstock::client::{ClientError, ControlPlane};

/// Stamps asked for per page (the control plane's maximum).
pub const PAGE: u32 = 1000;

/// Pages smaller than this are verified on one thread.
const PARALLEL_MIN: usize = 64;

/// What is wrong with one stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StampProblem {
    /// Stamps between the previous one and this one are missing.
    Gap { expected: u64 },
    /// `prev_hash` matches neither the contents nor the recorded hash of the stamp before.
    Link { prev: u64 },
    /// The signature does not verify against the agent's public key.
    Signature,
    /// The stamp carries no signature, and the chain breaks (or a signature fails) before a
    /// signed stamp vouches for it.
    Uncovered,
    /// A structural rule is broken (version, flags, request/response fields).
    Malformed(StampError),
    /// The hash the ledger recorded is not the hash of the stamp's contents.
    RecordedHash,
    /// The agent has no public key to verify with (never activated).
    NoKey,
    /// A response refers to a seq that is not an earlier request of this chain.
    RefSeq { ref_seq: u64 },
    /// The stamp names another agent.
    WrongAgent,
}

impl fmt::Display for StampProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gap { expected } => {
                write!(f, "stamps from seq {expected} on are missing before it")
            }
            Self::Link { prev } => write!(f, "prev_hash does not match seq {prev}"),
            Self::Signature => f.write_str("signature does not verify"),
            Self::Uncovered => f.write_str(
                "it is unsigned and no valid signature covers it (none of the stamps after it in its batch verifies and links back)",
            ),
            Self::Malformed(e) => write!(f, "malformed stamp: {e}"),
            Self::RecordedHash => {
                f.write_str("the recorded hash does not match the stamp's contents")
            }
            Self::NoKey => f.write_str("the agent has no public key to verify it with"),
            Self::RefSeq { ref_seq } => {
                write!(
                    f,
                    "it answers seq {ref_seq}, which is not an earlier request"
                )
            }
            Self::WrongAgent => f.write_str("the stamp belongs to another agent"),
        }
    }
}

/// One stamp and what is wrong with it (nothing, usually).
#[derive(Debug, Clone)]
pub struct Checked {
    pub record: StampRecord,
    pub problems: Vec<StampProblem>,
}

impl Checked {
    pub fn seq(&self) -> u64 {
        self.record.signed.stamp.seq
    }

    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems as one sentence: `signature does not verify; …`.
    pub fn describe(&self) -> String {
        self.problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Walks one chain in order, page by page.
pub struct ChainWalker {
    agent: AgentId,
    key: Option<VerifyingKey>,
    /// Unsigned stamps (in order) waiting for a signed stamp that extends them; they are handed
    /// out once it is seen, or with [`Self::finish`].
    held: Vec<Checked>,
    /// Seq, hash of its contents and recorded hash of the last stamp seen.
    prev: (u64, Hash32, Hash32),
    /// One bit per seq: was it a request? (to check responses' `ref_seq`)
    requests: Vec<u64>,
    threads: usize,
}

impl ChainWalker {
    pub fn new(agent: AgentId, key: Option<VerifyingKey>) -> Self {
        let g = Head::genesis(&agent).hash;
        Self {
            agent,
            key,
            prev: (0, g, g),
            held: Vec::new(),
            requests: Vec::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
        }
    }

    /// The last stamp walked: its seq and recorded hash.
    pub fn last(&self) -> (u64, Hash32) {
        (self.prev.0, self.prev.2)
    }

    fn mark_request(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.requests.len() <= word {
            self.requests.resize(word + 1, 0);
        }
        self.requests[word] |= 1 << bit;
    }

    fn was_request(&self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        self.requests.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Signature and structure results, in parallel for big pages. An unsigned stamp's result
    /// is its structure and hash only; whether a later signature covers it is the walk's part.
    fn signatures(&self, page: &[StampRecord]) -> Vec<Result<Hash32, StampError>> {
        let Some(key) = &self.key else {
            return page.iter().map(|_| Err(StampError::Signature)).collect();
        };
        let run = |chunk: &[StampRecord]| {
            let signed: Vec<(&SignedStamp, &VerifyingKey)> = chunk
                .iter()
                .filter(|r| r.signed.signature.is_some())
                .map(|r| (&r.signed, key))
                .collect();
            let mut verified = verify_many(&signed).into_iter();
            chunk
                .iter()
                .map(|r| match r.signed.signature {
                    Some(_) => verified.next().expect("one result per signed stamp"),
                    None => r.signed.checked_hash(),
                })
                .collect::<Vec<_>>()
        };
        if self.threads < 2 || page.len() < PARALLEL_MIN {
            return run(page);
        }
        let size = page.len().div_ceil(self.threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = page.chunks(size).map(|c| s.spawn(move || run(c))).collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("signature verification does not panic"))
                .collect()
        })
    }

    /// Checks the next page of the chain (stamps in seq order, following the last page). The
    /// stamps come back in order; trailing unsigned ones wait for the next page (or
    /// [`Self::finish`]) to learn whether a signature covers them.
    pub fn check_page(&mut self, page: Vec<StampRecord>) -> Vec<Checked> {
        let sigs = self.signatures(&page);
        let mut out = Vec::with_capacity(page.len() + self.held.len());
        for (record, sig) in page.into_iter().zip(sigs) {
            let s = &record.signed.stamp;
            // A signature covers the stamps before it only through their contents' hashes.
            let extends_held = s.seq == self.prev.0 + 1 && s.prev_hash == self.prev.1;
            let mut problems = Vec::new();
            if s.seq != self.prev.0 + 1 {
                problems.push(StampProblem::Gap {
                    expected: self.prev.0 + 1,
                });
            } else if s.prev_hash != self.prev.1 && s.prev_hash != self.prev.2 {
                // Matching the previous stamp's recorded hash is a sound link even when that
                // stamp was altered since: the alteration is reported there, once.
                problems.push(StampProblem::Link { prev: self.prev.0 });
            }
            let sig_ok = sig.is_ok();
            let hash = match sig {
                Ok(h) => h,
                Err(e) => {
                    problems.push(match (&self.key, e) {
                        (None, _) => StampProblem::NoKey,
                        (_, StampError::Signature) => StampProblem::Signature,
                        (_, e) => StampProblem::Malformed(e),
                    });
                    s.hash()
                }
            };
            if record.hash != hash {
                problems.push(StampProblem::RecordedHash);
            }
            if s.agent_id != self.agent {
                problems.push(StampProblem::WrongAgent);
            }
            match s.kind {
                StampKind::Request => self.mark_request(s.seq),
                StampKind::Response => {
                    if s.ref_seq >= s.seq || !self.was_request(s.ref_seq) {
                        problems.push(StampProblem::RefSeq { ref_seq: s.ref_seq });
                    }
                }
            }
            self.prev = (s.seq, hash, record.hash);
            let signed = record.signed.signature.is_some();
            let vouches = extends_held && signed && sig_ok;
            if !self.held.is_empty() && (signed || !extends_held) {
                self.release_held(vouches, &mut out);
            }
            let checked = Checked { record, problems };
            if signed || self.key.is_none() {
                out.push(checked);
            } else {
                self.held.push(checked);
            }
        }
        out
    }

    /// Hands out the held unsigned stamps: covered, or marked [`StampProblem::Uncovered`].
    fn release_held(&mut self, covered: bool, out: &mut Vec<Checked>) {
        for mut c in self.held.drain(..) {
            if !covered {
                c.problems.push(StampProblem::Uncovered);
            }
            out.push(c);
        }
    }

    /// The end of the chain: unsigned stamps still waiting for a signature are uncovered.
    pub fn finish(&mut self) -> Vec<Checked> {
        let mut out = Vec::new();
        self.release_held(false, &mut out);
        out
    }
}

/// A stamp page as the control plane sends it, read without serde's `flatten` (which buffers
/// every record into an intermediate map and costs about four times as much as the fields
/// themselves): strings are borrowed from the input and decoded in place.
#[derive(serde::Deserialize)]
struct WirePage<'a> {
    #[serde(borrow)]
    stamps: Vec<WireRecord<'a>>,
    next_after: Option<u64>,
}

#[derive(serde::Deserialize)]
struct WireRecord<'a> {
    version: u8,
    #[serde(borrow)]
    agent_id: std::borrow::Cow<'a, str>,
    seq: u64,
    #[serde(borrow)]
    prev_hash: std::borrow::Cow<'a, str>,
    kind: StampKind,
    time_ms: u64,
    #[serde(borrow)]
    model: std::borrow::Cow<'a, str>,
    tokens_in: u64,
    tokens_out: u64,
    ref_seq: u64,
    flags: u8,
    status: u16,
    #[serde(borrow)]
    blob_hash: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    signature: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    hash: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    verdict: std::borrow::Cow<'a, str>,
    #[serde(default)]
    grant: Option<u64>,
    #[serde(default)]
    remaining: Option<u64>,
    #[serde(default, borrow)]
    reason: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<std::borrow::Cow<'a, str>>,
    recorded_ms: u64,
    has_blob: bool,
}

fn hex32(s: &str) -> Option<Hash32> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(Hash32(out))
}

impl WireRecord<'_> {
    fn into_record(self, agent: &AgentId) -> Option<StampRecord> {
        use base64::Engine;
        let verdict = match &*self.verdict {
            "ok" => Verdict::Ok {
                grant: self.grant,
                remaining: self.remaining,
            },
            "locked" => Verdict::Locked {
                reason: self.reason.map(Into::into),
            },
            "budget" => Verdict::Budget,
            "breaker" => Verdict::Breaker {
                reason: self.reason?.into(),
            },
            "fork" => Verdict::Fork,
            "invalid" => Verdict::Invalid {
                message: self.message?.into(),
            },
            _ => return None,
        };
        let agent_id = if self.agent_id == agent.as_str() {
            agent.clone()
        } else {
            self.agent_id.parse().ok()?
        };
        let signature = match self.signature {
            Some(text) => {
                let mut sig = [0u8; 64];
                let n = base64::engine::general_purpose::STANDARD
                    .decode_slice(text.as_bytes(), &mut sig)
                    .ok()?;
                if n != 64 {
                    return None;
                }
                Some(lockstock::chain::Sig(sig))
            }
            None => None,
        };
        Some(StampRecord {
            signed: SignedStamp {
                stamp: lockstock::chain::Stamp {
                    version: self.version,
                    agent_id,
                    seq: self.seq,
                    prev_hash: hex32(&self.prev_hash)?,
                    kind: self.kind,
                    time_ms: self.time_ms,
                    model: self.model.into(),
                    tokens_in: self.tokens_in,
                    tokens_out: self.tokens_out,
                    ref_seq: self.ref_seq,
                    flags: self.flags,
                    status: self.status,
                    blob_hash: match self.blob_hash {
                        Some(h) => Some(hex32(&h)?),
                        None => None,
                    },
                },
                signature,
            },
            hash: hex32(&self.hash)?,
            verdict,
            recorded_ms: self.recorded_ms,
            has_blob: self.has_blob,
        })
    }
}

/// Parses a stamp page of `agent`: the fast way, else (an unexpected shape, a verdict this
/// build does not know) the API types' own way.
pub fn parse_page(body: &[u8], agent: &AgentId) -> Result<StampPage, serde_json::Error> {
    if let Ok(wire) = serde_json::from_slice::<WirePage<'_>>(body) {
        let stamps: Option<Vec<StampRecord>> = wire
            .stamps
            .into_iter()
            .map(|r| r.into_record(agent))
            .collect();
        if let Some(stamps) = stamps {
            return Ok(StampPage {
                stamps,
                next_after: wire.next_after,
            });
        }
    }
    serde_json::from_slice(body)
}

/// Reads stamp pages: the same `GET /v1/agents/{id}/stamps` as [`ControlPlane::stamps`], on
/// its own connection pool, parsed with [`parse_page`]. Any answer but a page goes through
/// [`ControlPlane::stamps`] again, so errors read exactly as everywhere else.
#[derive(Clone)]
pub struct Pages {
    cp: ControlPlane,
    http: lockstock::http::HttpClient,
    auth: http::HeaderValue,
}

impl Pages {
    /// `key` is the admin key `cp` was made with.
    pub fn new(cp: ControlPlane, key: &secrecy::SecretString) -> Result<Self, ClientError> {
        use secrecy::ExposeSecret;
        let mut auth = http::HeaderValue::try_from(format!("Bearer {}", key.expose_secret()))
            .map_err(|_| ClientError::InvalidKey)?;
        auth.set_sensitive(true);
        Ok(Self {
            cp,
            http: lockstock::http::client(lockstock::http::ClientOptions::default()),
            auth,
        })
    }

    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// The page of stamps after seq `after`.
    pub async fn get(&self, agent: &AgentId, after: u64) -> Result<StampPage, ClientError> {
        use http_body_util::BodyExt;
        let base = self.cp.base_url();
        let req = http::Request::get(format!(
            "{base}/v1/agents/{agent}/stamps?after={after}&limit={PAGE}"
        ))
        .header(http::header::AUTHORIZATION, self.auth.clone())
        .body(lockstock::http::full(Vec::new()))
        .map_err(|_| ClientError::InvalidUrl {
            url: base.to_owned(),
        })?;
        let unreachable = |e: &(dyn std::error::Error + 'static)| ClientError::Unreachable {
            url: base.to_owned(),
            reason: lockstock::error_chain(e),
        };
        let call = async {
            let resp = self.http.request(req).await.map_err(|e| unreachable(&e))?;
            if !resp.status().is_success() {
                return Ok(None);
            }
            let body = http_body_util::Limited::new(resp.into_body(), 64 << 20)
                .collect()
                .await
                .map_err(|e| unreachable(&*e))?
                .to_bytes();
            parse_page(&body, agent)
                .map(Some)
                .map_err(|e| ClientError::Decode(e.to_string()))
        };
        let page = tokio::time::timeout(std::time::Duration::from_secs(60), call)
            .await
            .map_err(|_| ClientError::Timeout {
                url: base.to_owned(),
                secs: 60,
            })??;
        match page {
            Some(p) => Ok(p),
            None => self.cp.stamps(agent, after, PAGE).await,
        }
    }
}

/// Why a stamp has no transcript to show. None of these is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The stamp commits to no blob and the request was forwarded: no account key was set.
    NotSealed,
    /// The request never reached the provider, so there is no answer to keep.
    NotForwarded,
    /// The stamp commits to a blob that the control plane does not have.
    NotUploaded,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotSealed => "blob not available: the gateway ran without an account key, so this transcript was never sealed",
            Self::NotForwarded => "blob not available: the request never reached the provider, so there is no answer",
            Self::NotUploaded => "blob not available: the stamp commits to a blob the control plane does not have (not uploaded yet, or lost)",
        })
    }
}

/// A stamp's blob, fetched and checked against the hash the stamp commits to.
#[derive(Debug, Clone)]
pub enum Blob {
    /// The bytes match the stamp's `blob_hash`.
    Verified(Bytes),
    Unavailable(Unavailable),
    /// The bytes do not match the stamp's `blob_hash`: altered in storage.
    Mismatch,
    /// A blob is stored, but the stamp commits to none.
    Unexpected,
}

/// What a stamp's blob state is without fetching anything, or `None` when it must be fetched.
pub fn blob_without_fetch(r: &StampRecord) -> Option<Blob> {
    let s = &r.signed.stamp;
    match (s.blob_hash, r.has_blob) {
        (Some(_), true) => None,
        (Some(_), false) => Some(Blob::Unavailable(Unavailable::NotUploaded)),
        (None, true) => Some(Blob::Unexpected),
        (None, false) if s.flags & flags::NOT_FORWARDED != 0 => {
            Some(Blob::Unavailable(Unavailable::NotForwarded))
        }
        (None, false) => Some(Blob::Unavailable(Unavailable::NotSealed)),
    }
}

/// Fetches a stamp's blob (when there is one) and checks its hash before anything else.
pub async fn fetch_blob(
    cp: &ControlPlane,
    agent: &AgentId,
    r: &StampRecord,
) -> Result<Blob, ClientError> {
    if let Some(b) = blob_without_fetch(r) {
        return Ok(b);
    }
    let want = r
        .signed
        .stamp
        .blob_hash
        .expect("checked by blob_without_fetch");
    Ok(match cp.blob(agent, r.signed.stamp.seq).await? {
        None => Blob::Unavailable(Unavailable::NotUploaded),
        Some(bytes) if Hash32::of(&bytes) == want => Blob::Verified(bytes),
        Some(_) => Blob::Mismatch,
    })
}

/// Parses an agent's Ed25519 public key (hex).
pub fn parse_public_key(hex_key: &str) -> Option<VerifyingKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut bytes).ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Finds an agent by id, or by its name when exactly one agent has it.
pub async fn resolve_agent(cp: &ControlPlane, given: &str) -> Result<AgentId, ResolveError> {
    if let Ok(id) = given.trim().parse::<AgentId>() {
        return Ok(id);
    }
    let list = cp.agents().await.map_err(ResolveError::Api)?;
    let matches: Vec<AgentId> = list
        .agents
        .into_iter()
        .filter(|a| a.name.eq_ignore_ascii_case(given.trim()))
        .map(|a| a.agent_id)
        .collect();
    match matches.len() {
        1 => Ok(matches.into_iter().next().expect("one")),
        0 => Err(ResolveError::Unknown(given.to_owned())),
        _ => Err(ResolveError::Ambiguous {
            name: given.to_owned(),
            ids: matches.iter().map(ToString::to_string).collect(),
        }),
    }
}

/// Why `--agent-id` names no single agent.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "no agent is called {0:?}\n  hint: give its id (agent_XXXXXXXX_name); `lockstock-gateway agents` lists them"
    )]
    Unknown(String),
    #[error("{} agents are called {name:?}: {}\n  hint: give the id instead", .ids.len(), .ids.join(", "))]
    Ambiguous { name: String, ids: Vec<String> },
    #[error("cannot list the agents: {0}")]
    Api(#[source] ClientError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use lockstock::api::Verdict;
    use lockstock::chain::{STAMP_VERSION, Stamp};

    fn agent() -> AgentId {
        "agent_0a0b0c0d_walk".parse().unwrap()
    }

    fn chain(n: u64, key: &SigningKey) -> Vec<StampRecord> {
        batched(n, key, 1)
    }

    /// A chain signed as the gateway signs it: one signature per batch of `size`.
    fn batched(n: u64, key: &SigningKey, size: usize) -> Vec<StampRecord> {
        let mut head = Head::genesis(&agent());
        let mut stamps = Vec::new();
        for seq in 1..=n {
            let request = seq % 2 == 1;
            let stamp = Stamp {
                version: STAMP_VERSION,
                agent_id: agent(),
                seq,
                prev_hash: head.hash,
                kind: if request {
                    StampKind::Request
                } else {
                    StampKind::Response
                },
                time_ms: 1_700_000_000_000 + seq,
                model: "m".into(),
                tokens_in: 1,
                tokens_out: 2,
                ref_seq: if request { 0 } else { seq - 1 },
                flags: 0,
                status: if request { 0 } else { 200 },
                blob_hash: None,
            };
            head = Head {
                seq,
                hash: stamp.hash(),
            };
            stamps.push(stamp);
        }
        let mut signed = Vec::new();
        while !stamps.is_empty() {
            let rest = stamps.split_off(size.min(stamps.len()));
            signed.extend(lockstock::chain::sign_batch(
                std::mem::replace(&mut stamps, rest),
                key,
            ));
        }
        signed
            .into_iter()
            .map(|signed| StampRecord {
                hash: signed.stamp.hash(),
                signed,
                verdict: Verdict::Ok {
                    grant: None,
                    remaining: None,
                },
                recorded_ms: 0,
                has_blob: false,
            })
            .collect()
    }

    fn walk(stamps: Vec<StampRecord>, key: &SigningKey) -> Vec<(u64, String)> {
        let mut w = ChainWalker::new(agent(), Some(key.verifying_key()));
        let mut out = Vec::new();
        // Two pages, to cross a page boundary.
        let mut stamps = stamps;
        let total = stamps.len();
        let second = stamps.split_off(total / 2);
        let mut checked = w.check_page(stamps);
        checked.extend(w.check_page(second));
        checked.extend(w.finish());
        let mut seqs = Vec::new();
        for c in checked {
            seqs.push(c.seq());
            if !c.ok() {
                out.push((c.seq(), c.describe()));
            }
        }
        assert!(seqs.is_sorted(), "stamps come back in order: {seqs:?}");
        assert_eq!(seqs.len(), total, "every stamp comes back once");
        out
    }

    #[test]
    fn a_sound_chain_has_no_problems() {
        let key = SigningKey::from_bytes(&[3; 32]);
        assert!(walk(chain(200, &key), &key).is_empty());
    }

    #[test]
    fn each_kind_of_damage_is_named_at_its_seq_only() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut c = chain(200, &key);
        c[16].signed.stamp.tokens_out += 1; // seq 17: contents altered
        c[119].signed.stamp.prev_hash.0[0] ^= 1; // seq 120: link altered
        c.remove(150); // seq 151 missing
        let found = walk(c, &key);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].0, 17);
        assert!(
            found[0].1.contains("signature does not verify"),
            "{found:?}"
        );
        assert!(found[0].1.contains("recorded hash"), "{found:?}");
        assert_eq!(found[1].0, 120);
        assert!(
            found[1].1.contains("prev_hash does not match seq 119"),
            "{found:?}"
        );
        assert_eq!(found[2].0, 152);
        assert!(
            found[2]
                .1
                .starts_with("stamps from seq 151 on are missing before it"),
            "{found:?}"
        );
    }

    #[test]
    fn one_signature_per_batch_covers_the_batch_across_pages() {
        let key = SigningKey::from_bytes(&[3; 32]);
        // Batches of 7: seqs 99..=105 are one batch, cut by the page boundary after seq 100.
        let sound = batched(200, &key, 7);
        assert!(sound[98].signed.signature.is_none() && sound[104].signed.signature.is_some());
        assert!(walk(sound.clone(), &key).is_empty());

        // Altered contents of an unsigned stamp: the batch's signature no longer reaches it
        // or the stamps before it (it still covers those after it).
        let mut altered = sound.clone();
        altered[100].signed.stamp.tokens_out += 1;
        let found = walk(altered, &key);
        let seqs: Vec<u64> = found.iter().map(|f| f.0).collect();
        assert_eq!(seqs, [99, 100, 101], "{found:?}");
        assert!(
            found[0].1.contains("no valid signature covers it"),
            "{found:?}"
        );
        assert!(found[2].1.contains("recorded hash"), "{found:?}");

        // A forged batch signature: every stamp of the batch is named.
        let mut forged = sound.clone();
        forged[104].signed.signature.as_mut().unwrap().0[9] ^= 1;
        let seqs: Vec<u64> = walk(forged, &key).iter().map(|f| f.0).collect();
        assert_eq!(seqs, [99, 100, 101, 102, 103, 104, 105]);

        // A chain that ends before its last batch's signature.
        let mut cut = batched(10, &key, 4);
        cut.pop();
        let found = walk(cut, &key);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, 9);
        assert!(found[0].1.contains("no valid signature covers it"));
    }

    #[test]
    fn the_fast_page_parser_reads_what_the_api_types_write() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut stamps = chain(6, &key);
        stamps[1].signed.stamp.blob_hash = Some(Hash32([9; 32]));
        stamps[1].has_blob = true;
        stamps[3].signed.signature = None; // covered by a later stamp of its batch
        let verdicts = [
            Verdict::Locked { reason: None },
            Verdict::Locked {
                reason: Some("incident \"42\"".into()),
            },
            Verdict::Budget,
            Verdict::Breaker {
                reason: "burst".into(),
            },
            Verdict::Invalid {
                message: "bad".into(),
            },
        ];
        for (r, v) in stamps.iter_mut().skip(1).zip(verdicts) {
            r.verdict = v;
        }
        stamps[2].signed.stamp.model = "gpt-4o \u{e9}\n\"quoted\"".into();
        for next_after in [None, Some(6)] {
            let page = StampPage {
                stamps: stamps.clone(),
                next_after,
            };
            let json = serde_json::to_vec(&page).unwrap();
            assert_eq!(parse_page(&json, &agent()).unwrap(), page);
            // …by the fast path, not the fallback.
            let wire: WirePage<'_> = serde_json::from_slice(&json).unwrap();
            assert!(
                wire.stamps
                    .into_iter()
                    .all(|r| r.into_record(&agent()).is_some())
            );
        }
        let mut odd = serde_json::to_value(StampPage {
            stamps: stamps[..1].to_vec(),
            next_after: None,
        })
        .unwrap();
        odd["stamps"][0]["verdict"] = "something_new".into();
        assert!(parse_page(odd.to_string().as_bytes(), &agent()).is_err());
    }

    #[test]
    fn without_a_key_nothing_verifies() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut w = ChainWalker::new(agent(), None);
        let checked = w.check_page(chain(2, &key));
        assert!(
            checked
                .iter()
                .all(|c| c.problems == vec![StampProblem::NoKey])
        );
    }
}
