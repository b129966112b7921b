//! The ledger's in-memory view of every agent, owned by the writer thread.
//!
//! Everything here except reservations is also in the `agents` table, written in the same
//! transaction as the stamps that changed it. Reservations live only in memory: they are
//! rebuilt at startup from request stamps granted within the reservation TTL that no response
//! stamp has settled.

use std::collections::{BTreeMap, HashMap};

use ed25519_dalek::VerifyingKey;
use lockstock::AgentId;
use lockstock::api::{AgentInfo, AgentPolicy, SentinelConfig, Verdict};
use lockstock::chain::{Hash32, Head};
use rusqlite::{Connection, params};

use crate::Error;
use crate::sentinel::Sentinel;

/// Tokens held for a granted request until its response stamp settles or the TTL passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub amount: u64,
    pub expires_ms: u64,
}

#[derive(Debug)]
pub(crate) struct Agent {
    pub row: i64,
    pub id: AgentId,
    pub name: String,
    pub provider: Option<String>,
    pub created_ms: u64,
    /// Hash of the unused genesis token and its expiry; `None` once used.
    pub genesis: Option<([u8; 32], u64)>,
    pub key: Option<VerifyingKey>,
    /// Set by an admin.
    pub lock_reason: Option<String>,
    /// Set by a fork; cleared only by an admin unlock.
    pub frozen: Option<String>,
    /// Set by Sentinel; cleared only by an admin unlock.
    pub breaker: Option<String>,
    pub budget: Option<u64>,
    pub used: u64,
    /// By request seq; seqs grow with time, so the first entry expires first.
    pub reservations: BTreeMap<u64, Reservation>,
    pub reserved: u64,
    pub head: Head,
    pub last_seen_ms: Option<u64>,
    pub sentinel_cfg: SentinelConfig,
    pub sentinel: Sentinel,
    pub dirty: bool,
}

impl Agent {
    /// A freshly provisioned agent.
    pub fn new(
        row: i64,
        id: AgentId,
        provider: Option<String>,
        now_ms: u64,
        genesis: ([u8; 32], u64),
    ) -> Self {
        Self {
            row,
            name: id.name().to_owned(),
            head: Head::genesis(&id),
            id,
            provider,
            created_ms: now_ms,
            genesis: Some(genesis),
            key: None,
            lock_reason: None,
            frozen: None,
            breaker: None,
            budget: None,
            used: 0,
            reservations: BTreeMap::new(),
            reserved: 0,
            last_seen_ms: None,
            sentinel_cfg: SentinelConfig::default(),
            sentinel: Sentinel::default(),
            dirty: false,
        }
    }

    /// Why request stamps are refused with the lock verdict, if they are.
    pub fn locked_reason(&self) -> Option<&str> {
        self.frozen.as_deref().or(self.lock_reason.as_deref())
    }

    /// Drops reservations whose response never came.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(entry) = self.reservations.first_entry() {
            if entry.get().expires_ms > now_ms {
                break;
            }
            let r = entry.remove();
            self.reserved -= r.amount;
        }
    }

    pub fn reserve(&mut self, seq: u64, amount: u64, expires_ms: u64) {
        if let Some(old) = self
            .reservations
            .insert(seq, Reservation { amount, expires_ms })
        {
            self.reserved -= old.amount;
        }
        self.reserved += amount;
    }

    pub fn release(&mut self, seq: u64) {
        if let Some(r) = self.reservations.remove(&seq) {
            self.reserved -= r.amount;
        }
    }

    /// Budget minus settled and reserved tokens; `None` is unlimited.
    pub fn remaining(&self) -> Option<u64> {
        self.budget
            .map(|b| b.saturating_sub(self.used.saturating_add(self.reserved)))
    }

    pub fn info(&mut self, now_ms: u64) -> AgentInfo {
        self.expire(now_ms);
        AgentInfo {
            agent_id: self.id.clone(),
            name: self.name.clone(),
            provider: self.provider.clone(),
            created_ms: self.created_ms,
            activated: self.key.is_some(),
            locked: self.locked_reason().is_some(),
            lock_reason: self.locked_reason().map(str::to_owned),
            budget: self.budget,
            used: self.used,
            reserved: self.reserved,
            remaining: self.remaining(),
            last_seen_ms: self.last_seen_ms,
            seq: self.head.seq,
            chain_head: self.head.hash,
            public_key: self.key.map(|k| hex::encode(k.as_bytes())),
            sentinel: self.sentinel_cfg.clone(),
            breaker: self.breaker.clone(),
        }
    }

    pub fn policy(&mut self, now_ms: u64) -> AgentPolicy {
        self.expire(now_ms);
        AgentPolicy {
            agent_id: self.id.clone(),
            locked: self.locked_reason().is_some(),
            lock_reason: self.locked_reason().map(str::to_owned),
            remaining: self.remaining(),
            head: self.head,
            public_key: self.key.map(|k| hex::encode(k.as_bytes())),
        }
    }
}

/// Every agent, by id, plus which ones changed in the open transaction.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub agents: HashMap<AgentId, Agent>,
    pub dirty: Vec<AgentId>,
}

impl State {
    /// Marks an agent for [`State::flush`].
    pub fn touch(dirty: &mut Vec<AgentId>, agent: &mut Agent) {
        if !agent.dirty {
            agent.dirty = true;
            dirty.push(agent.id.clone());
        }
    }

    /// Writes every changed agent row (inside the writer's open transaction).
    pub fn flush(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut stmt = conn.prepare_cached(
            "UPDATE agents SET genesis_hash = ?1, genesis_expires_ms = ?2, public_key = ?3, \
             lock_reason = ?4, frozen_reason = ?5, breaker_reason = ?6, budget = ?7, used = ?8, \
             head_seq = ?9, head_hash = ?10, last_seen_ms = ?11, sentinel_config = ?12, \
             sentinel_state = ?13 WHERE id = ?14",
        )?;
        for id in self.dirty.drain(..) {
            let Some(a) = self.agents.get_mut(&id) else {
                continue;
            };
            a.dirty = false;
            let cfg = serde_json::to_string(&a.sentinel_cfg)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            stmt.execute(params![
                a.genesis.map(|g| g.0),
                a.genesis.map(|g| g.1 as i64),
                a.key.map(|k| k.to_bytes()),
                a.lock_reason,
                a.frozen,
                a.breaker,
                a.budget.map(|b| b as i64),
                a.used as i64,
                a.head.seq as i64,
                a.head.hash.0,
                a.last_seen_ms.map(|t| t as i64),
                cfg,
                a.sentinel.to_bytes(),
                a.row,
            ])?;
        }
        Ok(())
    }

    /// Reads every agent and rebuilds the open reservations.
    pub fn load(conn: &Connection, now_ms: u64, ttl_ms: u64) -> Result<Self, Error> {
        let mut agents = HashMap::new();
        let mut stmt = conn.prepare(
            "SELECT id, agent_id, provider, created_ms, genesis_hash, genesis_expires_ms, \
             public_key, lock_reason, frozen_reason, breaker_reason, budget, used, head_seq, \
             head_hash, last_seen_ms, sentinel_config, sentinel_state FROM agents",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let id_text: String = r.get(1)?;
            let id: AgentId = id_text
                .parse()
                .map_err(|e| Error::Corrupt(format!("agent id {id_text:?}: {e}")))?;
            let genesis = match (
                r.get::<_, Option<[u8; 32]>>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ) {
                (Some(h), Some(exp)) => Some((h, exp as u64)),
                _ => None,
            };
            let key = r
                .get::<_, Option<[u8; 32]>>(6)?
                .map(|k| VerifyingKey::from_bytes(&k))
                .transpose()
                .map_err(|_| Error::Corrupt(format!("public key of {id}")))?;
            let cfg_text: String = r.get(15)?;
            let sentinel_cfg = serde_json::from_str(&cfg_text)
                .map_err(|e| Error::Corrupt(format!("Sentinel settings of {id}: {e}")))?;
            let sentinel = r
                .get::<_, Option<Vec<u8>>>(16)?
                .map(|b| Sentinel::from_bytes(&b))
                .unwrap_or_default();
            let agent = Agent {
                row: r.get(0)?,
                name: id.name().to_owned(),
                provider: r.get(2)?,
                created_ms: r.get::<_, i64>(3)? as u64,
                genesis,
                key,
                lock_reason: r.get(7)?,
                frozen: r.get(8)?,
                breaker: r.get(9)?,
                budget: r.get::<_, Option<i64>>(10)?.map(|b| b as u64),
                used: r.get::<_, i64>(11)? as u64,
                reservations: BTreeMap::new(),
                reserved: 0,
                head: Head {
                    seq: r.get::<_, i64>(12)? as u64,
                    hash: Hash32(r.get(13)?),
                },
                last_seen_ms: r.get::<_, Option<i64>>(14)?.map(|t| t as u64),
                sentinel_cfg,
                sentinel,
                dirty: false,
                id: id.clone(),
            };
            agents.insert(id, agent);
        }
        let mut state = Self {
            agents,
            dirty: Vec::new(),
        };
        state.rebuild_reservations(conn, now_ms, ttl_ms)?;
        Ok(state)
    }

    /// Walks each agent's recent stamps backwards until they are older than the TTL.
    fn rebuild_reservations(
        &mut self,
        conn: &Connection,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<(), Error> {
        let mut stmt = conn.prepare(
            "SELECT seq, kind, tokens_in, ref_seq, verdict, recorded_ms FROM stamps \
             WHERE agent = ?1 ORDER BY seq DESC",
        )?;
        for agent in self.agents.values_mut() {
            if agent.head.seq == 0 {
                continue;
            }
            let mut settled = std::collections::HashSet::new();
            let mut rows = stmt.query([agent.row])?;
            while let Some(r) = rows.next()? {
                let recorded = r.get::<_, i64>(5)? as u64;
                let expires = recorded.saturating_add(ttl_ms);
                if expires <= now_ms {
                    break;
                }
                let seq = r.get::<_, i64>(0)? as u64;
                let kind: i64 = r.get(1)?;
                if kind == 2 {
                    settled.insert(r.get::<_, i64>(3)? as u64);
                    continue;
                }
                if settled.contains(&seq) {
                    continue;
                }
                let verdict: String = r.get(4)?;
                let verdict: Verdict = serde_json::from_str(&verdict).map_err(|e| {
                    Error::Corrupt(format!("verdict of {} seq {seq}: {e}", agent.id))
                })?;
                if let Verdict::Ok {
                    grant: Some(grant),
                    remaining: Some(_),
                } = verdict
                {
                    let tokens_in = r.get::<_, i64>(2)? as u64;
                    agent.reserve(seq, tokens_in.saturating_add(grant), expires);
                }
            }
        }
        Ok(())
    }
}
