//! The bundle ledger in PostgreSQL: what replicas of one service share.
//!
//! With `delphi serve --ledger postgres://…` every replica keeps its
//! bundles' *bytes* in one directory every replica reads (`--bundle-dir` on
//! shared storage, with one `--bundle-key`), and the *ledger* — which
//! bundles exist, whose they are, their state and expiry — in one table:
//!
//! ```sql
//! delphi_bundles(id bytea primary key, owner text, state text,
//!                replica text, bytes bigint, created timestamptz,
//!                expires timestamptz, taken_by text, taken_at timestamptz)
//! ```
//!
//! A row is `reserved` (room held before an offline phase; `id` is then the
//! reservation's), `ready` (the bundle is stored under its id), `taken`
//! (consumed by an online phase, by `taken_by`) or `expired`. Rows are never
//! deleted once ready, so an id can be consumed once and only once whatever
//! the replicas do: the claim is one `UPDATE … WHERE state = 'ready'` in one
//! transaction, and of two replicas racing for a bundle exactly one gets
//! the row back. Reservations take a transaction-scoped advisory lock, so
//! the store's limits and each client's quota hold across replicas.
//!
//! An object store (S3 and the like) in place of the shared directory
//! would need: a put that is visible whole or not at all (S3's PUT is), a
//! delete after the claim (the ledger, not the object store, decides who
//! consumed a bundle), and the bundle key kept out of it.

use std::sync::Mutex;
use std::time::Duration;

use postgres::{Client, NoTls};

use crate::error::{EngineError, Result, StoreProblem};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS delphi_bundles (
    id bytea PRIMARY KEY,
    owner text NOT NULL,
    state text NOT NULL CHECK (state IN ('reserved', 'ready', 'taken', 'expired')),
    replica text NOT NULL,
    bytes bigint NOT NULL DEFAULT 0,
    created timestamptz NOT NULL DEFAULT now(),
    expires timestamptz NOT NULL,
    taken_by text,
    taken_at timestamptz
);
CREATE INDEX IF NOT EXISTS delphi_bundles_live ON delphi_bundles (state, owner);
";

/// The advisory lock key every reservation takes (`"delphi"` in ASCII).
const LOCK: i64 = 0x6465_6c70_6869;

/// What a claim found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This replica consumed it.
    Won,
    /// Consumed before (by this or another replica).
    Consumed,
    /// No ready bundle with this id: never stored, expired, or reserved only.
    Missing,
}

/// A connection to the shared ledger, for one replica.
pub struct Ledger {
    client: Mutex<Client>,
    replica: String,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("replica", &self.replica).finish_non_exhaustive()
    }
}

fn db(e: postgres::Error) -> EngineError {
    EngineError::Store {
        path: "ledger".into(),
        problem: StoreProblem::Other(format!("PostgreSQL: {e}")),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Ledger {
    /// Connects (a URL `postgres://user@host:port/db` or key=value
    /// settings, `host=/run/postgresql user=delphi`) and makes the table if
    /// it is not there. `replica` names this server in the ledger.
    pub fn connect(url: &str, replica: &str) -> Result<Ledger> {
        let mut client = Client::connect(url, NoTls).map_err(db)?;
        client.batch_execute(SCHEMA).map_err(db)?;
        Ok(Ledger { client: Mutex::new(client), replica: replica.to_string() })
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut c = self
            .client
            .lock()
            .map_err(|_| EngineError::Internal("the ledger connection was poisoned".into()))?;
        f(&mut c)
    }

    /// Reserves room for one bundle of `owner` under the limits, in one
    /// transaction holding the ledger's advisory lock: abandoned
    /// reservations (older than `stale`) are dropped, stored and reserved
    /// bundles counted. `Ok(Err(why))` when a limit refuses it.
    pub fn reserve(
        &self,
        reservation: &[u8; 16],
        owner: &str,
        bytes: u64,
        (max_bundles, max_bytes, per_owner): (usize, u64, usize),
        ttl: Duration,
        stale: Duration,
    ) -> Result<std::result::Result<(), String>> {
        self.with(|c| {
            let mut t = c.transaction().map_err(db)?;
            t.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK]).map_err(db)?;
            t.execute(
                "DELETE FROM delphi_bundles WHERE state = 'reserved' \
                 AND created < now() - make_interval(secs => $1)",
                &[&secs(stale)],
            )
            .map_err(db)?;
            let row = t
                .query_one(
                    "SELECT count(*), coalesce(sum(bytes), 0)::bigint, \
                     count(*) FILTER (WHERE owner = $1) FROM delphi_bundles \
                     WHERE state IN ('reserved', 'ready') AND expires > now()",
                    &[&owner],
                )
                .map_err(db)?;
            let (count, held, mine): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            if mine as u64 >= per_owner as u64 {
                return Ok(Err(format!(
                    "this client holds {mine} unused bundles on the service, its quota \
                     (--max-bundles-per-client {per_owner}); use them first"
                )));
            }
            if count as u64 >= max_bundles as u64 || (held as u64).saturating_add(bytes) > max_bytes
            {
                return Ok(Err(format!(
                    "the bundle store is full (at most {max_bundles} bundles, {} MB, on every \
                     replica together; unused bundles expire after {} s)",
                    max_bytes >> 20,
                    ttl.as_secs()
                )));
            }
            t.execute(
                "INSERT INTO delphi_bundles (id, owner, state, replica, bytes, expires) \
                 VALUES ($1, $2, 'reserved', $3, $4, now() + make_interval(secs => $5))",
                &[
                    &&reservation[..],
                    &owner,
                    &self.replica,
                    &(bytes.min(i64::MAX as u64) as i64),
                    &secs(ttl),
                ],
            )
            .map_err(db)?;
            t.commit().map_err(db)?;
            Ok(Ok(()))
        })
    }

    /// The reserved room now holds bundle `id` (stored, `bytes` on disk),
    /// ready until `ttl` from now.
    pub fn ready(
        &self,
        reservation: &[u8; 16],
        id: &[u8; 16],
        bytes: u64,
        ttl: Duration,
    ) -> Result<()> {
        self.with(|c| {
            let n = c
                .execute(
                    "UPDATE delphi_bundles SET id = $2, state = 'ready', bytes = $3, \
                     expires = now() + make_interval(secs => $4) \
                     WHERE id = $1 AND state = 'reserved'",
                    &[
                        &&reservation[..],
                        &&id[..],
                        &(bytes.min(i64::MAX as u64) as i64),
                        &secs(ttl),
                    ],
                )
                .map_err(db)?;
            if n == 1 {
                Ok(())
            } else {
                Err(EngineError::Store {
                    path: "ledger".into(),
                    problem: StoreProblem::Other(
                        "the reservation is gone (abandoned for too long?)".into(),
                    ),
                })
            }
        })
    }

    /// Gives a reservation back (its offline phase failed).
    pub fn release(&self, reservation: &[u8; 16]) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM delphi_bundles WHERE id = $1 AND state = 'reserved'",
                &[&&reservation[..]],
            )
            .map_err(db)
            .map(drop)
        })
    }

    /// Claims bundle `id` for this replica's online phase: one
    /// transaction; of any number of replicas racing, one wins.
    pub fn claim(&self, id: &[u8; 16]) -> Result<Claim> {
        self.with(|c| {
            let won = c
                .query_opt(
                    "UPDATE delphi_bundles SET state = 'taken', taken_by = $2, taken_at = now() \
                     WHERE id = $1 AND state = 'ready' AND expires > now() RETURNING owner",
                    &[&&id[..], &self.replica],
                )
                .map_err(db)?;
            if won.is_some() {
                return Ok(Claim::Won);
            }
            let state: Option<String> = c
                .query_opt("SELECT state FROM delphi_bundles WHERE id = $1", &[&&id[..]])
                .map_err(db)?
                .map(|r| r.get(0));
            Ok(match state.as_deref() {
                Some("taken") => Claim::Consumed,
                _ => Claim::Missing,
            })
        })
    }

    /// Marks the ready bundles past their expiry as expired; returns their
    /// ids (their files are then deleted).
    pub fn expire(&self) -> Result<Vec<[u8; 16]>> {
        self.with(|c| {
            let rows = c
                .query(
                    "UPDATE delphi_bundles SET state = 'expired' \
                     WHERE state = 'ready' AND expires <= now() RETURNING id",
                    &[],
                )
                .map_err(db)?;
            Ok(rows
                .iter()
                .filter_map(|r| <[u8; 16]>::try_from(r.get::<_, &[u8]>(0)).ok())
                .collect())
        })
    }

    /// Bundles ready now (every replica's).
    pub fn ready_count(&self) -> Result<usize> {
        self.with(|c| {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM delphi_bundles WHERE state = 'ready' AND expires > now()",
                    &[],
                )
                .map_err(db)?
                .get(0);
            Ok(n as usize)
        })
    }

    /// Which replica consumed `id` (`None` when not taken).
    pub fn taken_by(&self, id: &[u8; 16]) -> Result<Option<String>> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT taken_by FROM delphi_bundles WHERE id = $1 AND state = 'taken'",
                &[&&id[..]],
            )
            .map_err(db)?
            .and_then(|r| r.get(0)))
        })
    }
}
