//! Revocations that take effect within a second: access tokens by `jti`, and whole sandboxes.
//!
//! [`Revocations::check`] runs on every request, so it never does I/O: it looks in an in-memory
//! mirror of the store. Two stores sit behind the one type:
//!
//! - **local** (the default): an embedded redb file, so revocations survive a restart. A write is
//!   committed (fsync'd) to the file first, then applied to the mirror, so a revocation that
//!   answered `Ok` is both in force and durable.
//! - **redis**: shared by several replicas. Writes go straight to Redis (one Lua script each, so a
//!   write and its entry in the change log are atomic); a background task refreshes the mirror
//!   every 250 ms by reading only the changes since the last refresh, falling back to a full load
//!   when it cannot tell what it missed (Redis restarted empty, the log was trimmed). When the last
//!   successful refresh is over a second old, `check` answers [`RevocationError::Unknown`] and the
//!   caller fails closed.
//!
//! A revoked token is remembered until its `exp` plus [`EXPIRY_GRACE_SECS`] (the token verifier
//! allows some clock skew past `exp`; the grace must cover it), then forgotten; when its `exp` is
//! not known, for good ([`KEEP_FOREVER`]): no shorter bound is safe, since a token whose `exp` lies
//! beyond `--max-token-lifetime` is only refused until that much time remains, then works. A
//! revoked sandbox is remembered until [`Revocations::unrevoke_sandbox`].
//!
//! Redis layout, under a configurable prefix (default `daytona-authz:`): `revoked-jtis` (sorted
//! set, jti scored by when it may be forgotten), `revoked-sandboxes` (set), `seq` (counter, one
//! per write), `changes` (sorted set, the last writes scored by `seq`), `epoch` (random, set by
//! the first writer or reader: the generation of the data set). Redis must not evict these keys
//! (`maxmemory-policy noeviction`, or no `maxmemory`) and should persist them (AOF).
//!
//! **Redis losing the data.** A Redis restarted without persistence, flushed, or failed over to a
//! replica that had not caught up answers "no revocations" as calmly as a healthy one. Every
//! replica remembers the epoch its mirror was loaded under and the last `seq` it applied; an epoch
//! missing or changed, or a `seq` gone backwards, means Redis lost data. The replica then does not
//! take Redis's word for it: its mirror stays as it was (so `check` keeps refusing what was
//! revoked), it writes every revocation the mirror holds back into Redis (keeping the later expiry
//! of each token, logging what it added so the other replicas pick it up), and only then reloads.
//! Until that succeeds the mirror is not refreshed, so after a second `check` fails closed. Each
//! such restore logs an error and counts in `daytona_authz_revocation_store_restores_total`. What
//! is lost for good: revocations no running replica had mirrored yet (written less than one
//! refresh, 250 ms, before the loss); and a sandbox lifted in that window, or while replicas are
//! restoring, may come back revoked (lift it again).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use redb::{ReadableTable, TableDefinition};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::authz::host::is_uuid;

/// How long after a token's `exp` its revocation is still kept: covers the clock skew the token
/// verifier allows past `exp` (`--clock-skew`, at most 10 minutes), so a revoked token cannot
/// come back inside that window. Raise it with that limit.
pub const EXPIRY_GRACE_SECS: u64 = 600;

/// Most revoked tokens kept at once; revoking one more is refused (expired ones are pruned first).
pub const MAX_REVOKED_TOKENS: usize = 1_000_000;

/// Most revoked sandboxes kept at once; revoking one more is refused.
pub const MAX_REVOKED_SANDBOXES: usize = 1_000_000;

/// Longest accepted `jti`, in bytes.
pub const MAX_JTI_BYTES: usize = 256;

/// Latest accepted `expires_at`: 9999-12-31T23:59:59Z. Also keeps Redis scores (doubles) exact.
const MAX_EXPIRES_AT: u64 = 253_402_300_799;

/// The "forget after" of a token revoked without a known expiry: never reached (2^53 seconds is
/// hundreds of millions of years, and exact as a Redis score), so it is never pruned.
pub const KEEP_FOREVER: u64 = 1 << 53;

/// How old the Redis mirror may get before `check` stops trusting it.
const MAX_STALENESS: Duration = Duration::from_secs(1);

/// How often the Redis mirror is refreshed.
const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// Bounds one incremental refresh read, so a hung Redis is noticed (and retried) within the
/// second.
const REFRESH_TIMEOUT: Duration = Duration::from_millis(750);

/// Bounds a full load of the Redis store (at start, after Redis lost its data or the log was
/// trimmed past us); a million revoked tokens take well under this.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds one write to Redis, and connecting at start.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bounds writing the mirror back into Redis after it lost its data.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// Revocations written back per restore script call, so Redis is never blocked for long.
const RESTORE_CHUNK: usize = 1000;

/// After this long without a good refresh, a new connection replaces the current one (again
/// every so long while it lasts).
const RENEW_AFTER: Duration = Duration::from_secs(5);

/// How often expired token revocations are dropped (from the mirror, and from the store).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How many recent writes Redis keeps for incremental refreshes; a replica further behind reloads.
const CHANGE_LOG_LEN: usize = 10_000;

/// Expired entries removed from the mirror per write-lock hold, so `check` is never held up long.
const PRUNE_CHUNK: usize = 1024;

/// Local store: jti → unix second after which the entry may be forgotten.
const TOKENS: TableDefinition<&str, u64> = TableDefinition::new("revoked_tokens");
/// Local store: revoked sandbox ids.
const SANDBOXES: TableDefinition<&str, ()> = TableDefinition::new("revoked_sandboxes");

/// What [`Revocations::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Revoked(RevokedBy),
}

/// Why a token no longer works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedBy {
    /// The token itself was revoked (by its `jti`).
    Token,
    /// Every token for its sandbox was revoked.
    Sandbox,
    /// Every token naming its `sub` (a person) was revoked.
    Subject,
}

/// A failed revocation check or write. Messages never contain a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// The revocation status cannot be known (the shared store has not answered for over a
    /// second): the caller must fail closed.
    #[error("revocation status unknown: the revocation store has not answered for over a second")]
    Unknown,
    #[error("revocation store I/O failed: {0}")]
    Io(String),
    #[error("Redis revocation store failed: {0}")]
    Redis(String),
    #[error("invalid revocation: {0}")]
    Invalid(String),
}

/// How many revocations are held (for metrics and the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationCounts {
    /// Revoked tokens, including expired ones not pruned yet.
    pub tokens: usize,
    pub sandboxes: usize,
}

/// The revocation store: `check` in memory, writes to the local file or to Redis.
///
/// `Send + Sync`; share it behind an `Arc`. Dropping it stops the Redis refresh task.
pub struct Revocations {
    shared: Arc<Shared>,
    backend: Backend,
    limits: Limits,
}

/// Most entries of each kind; tests lower them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    tokens: usize,
    sandboxes: usize,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        tokens: MAX_REVOKED_TOKENS,
        sandboxes: MAX_REVOKED_SANDBOXES,
    };
}

enum Backend {
    Local(LocalStore),
    Redis(RedisStore),
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("backend", &self.backend())
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl Revocations {
    /// Opens (or creates) the local store at `path` and loads it into memory, dropping expired
    /// token revocations. Fails if the file is not a redb database or another process holds it.
    /// Blocking file I/O (and one fsync): call it at start-up.
    pub fn open_local(path: &Path) -> Result<Self, RevocationError> {
        let db = redb::Database::create(path).map_err(|e| {
            RevocationError::Io(format!(
                "cannot open the revocation store {}: {e}",
                path.display()
            ))
        })?;
        let shared = Arc::new(Shared::new(Counter::default()));
        let store = LocalStore {
            db: Arc::new(db),
            write_lock: Arc::new(Mutex::new(())),
            last_prune: Mutex::new(Instant::now()),
        };
        let mirror = store.load(unix_now())?;
        *shared.write() = mirror;
        Ok(Revocations {
            shared,
            backend: Backend::Local(store),
            limits: Limits::DEFAULT,
        })
    }

    /// Connects to Redis at `url` (`redis://[:password@]host[:port][/db]`), loads every
    /// revocation under `key_prefix` and starts the refresh task. Fails if Redis cannot be reached
    /// now. Must run inside a Tokio runtime. `restores` counts the times Redis was found to have
    /// lost our data and this replica wrote its copy back (see the module documentation).
    pub async fn connect_redis(
        url: &str,
        key_prefix: &str,
        restores: Counter,
    ) -> Result<Self, RevocationError> {
        let trust = crate::outbound::trust::TrustRoots::compiled_in();
        Revocations::connect_redis_trusting(url, &trust, key_prefix, restores).await
    }

    /// [`Revocations::connect_redis`], a `rediss://` server verified against `trust`
    /// (`--ca-file`).
    pub async fn connect_redis_trusting(
        url: &str,
        trust: &crate::outbound::trust::TrustRoots,
        key_prefix: &str,
        restores: Counter,
    ) -> Result<Self, RevocationError> {
        if key_prefix.is_empty()
            || key_prefix.len() > 128
            || key_prefix
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(RevocationError::Invalid(
                "the Redis key prefix must be 1 to 128 characters without spaces".into(),
            ));
        }
        // The URL may carry a password: it is never put in an error or a log line.
        let client = trust.redis_client(url).map_err(RevocationError::Invalid)?;
        let conn = Arc::new(
            bounded(WRITE_TIMEOUT, RedisConn::connect(client))
                .await
                .map_err(|e| context("cannot connect", e))?,
        );

        let shared = Arc::new(Shared::new(restores));
        let mut link = RedisLink {
            conn: Arc::clone(&conn),
            keys: Keys::new(key_prefix),
            epoch: None,
        };
        let started = shared.clock_ms();
        bounded(RELOAD_TIMEOUT, link.reload(&shared, unix_now(), None))
            .await
            .map_err(|e| context("cannot load revocations", e))?;
        shared.mark_refreshed(started);

        let store = RedisStore {
            conn,
            keys: link.keys.clone(),
            script: redis::Script::new(WRITE_SCRIPT),
            refresher: tokio::spawn(refresh_loop(Arc::clone(&shared), link)),
        };
        Ok(Revocations {
            shared,
            backend: Backend::Redis(store),
            limits: Limits::DEFAULT,
        })
    }

    /// Revokes the token with this `jti`: until `expires_at` (its `exp`, unix seconds) plus
    /// [`EXPIRY_GRACE_SECS`], or for good when its expiry is not known (`None`). An `expires_at`
    /// in the past is refused: it would revoke nothing, and is most likely not the token's `exp`.
    pub async fn revoke_token(
        &self,
        jti: &str,
        expires_at: Option<u64>,
    ) -> Result<(), RevocationError> {
        validate_jti(jti)?;
        let now = unix_now();
        let forget_after = match expires_at {
            None => KEEP_FOREVER,
            Some(at) => forget_after(at, now)?,
        };
        self.write(
            Change::Token {
                jti: jti.into(),
                forget_after,
            },
            now,
        )
        .await
    }

    /// Revokes every token for this sandbox until [`Revocations::unrevoke_sandbox`].
    pub async fn revoke_sandbox(&self, sandbox_id: &str) -> Result<(), RevocationError> {
        validate_sandbox(sandbox_id)?;
        self.write(
            Change::Sandbox {
                id: sandbox_id.into(),
                revoked: true,
            },
            unix_now(),
        )
        .await
    }

    /// Revokes every token whose `sub` is `subject` (a person, whatever sandboxes their tokens
    /// name) until [`Revocations::unrevoke_subject`].
    ///
    /// Kept in the sandbox revocations' set (and its Redis set and change log) under
    /// [`SUBJECT_PREFIX`]: a sandbox id is a UUID, so the two can never meet, and every store
    /// written before subjects existed reads them as they are.
    pub async fn revoke_subject(&self, subject: &str) -> Result<(), RevocationError> {
        validate_subject(subject)?;
        self.write(
            Change::Sandbox {
                id: format!("{SUBJECT_PREFIX}{subject}").into(),
                revoked: true,
            },
            unix_now(),
        )
        .await
    }

    /// Lifts a subject revocation (tokens revoked one by one stay revoked).
    pub async fn unrevoke_subject(&self, subject: &str) -> Result<(), RevocationError> {
        validate_subject(subject)?;
        self.write(
            Change::Sandbox {
                id: format!("{SUBJECT_PREFIX}{subject}").into(),
                revoked: false,
            },
            unix_now(),
        )
        .await
    }

    /// Lifts a sandbox revocation (tokens revoked one by one stay revoked).
    pub async fn unrevoke_sandbox(&self, sandbox_id: &str) -> Result<(), RevocationError> {
        validate_sandbox(sandbox_id)?;
        self.write(
            Change::Sandbox {
                id: sandbox_id.into(),
                revoked: false,
            },
            unix_now(),
        )
        .await
    }

    /// [`Revocations::check_token`] for a token without a `sub`.
    pub fn check(
        &self,
        jti: Option<&str>,
        sandbox_id: &str,
        now: u64,
    ) -> Result<Status, RevocationError> {
        self.check_token(jti, sandbox_id, None, now)
    }

    /// The hot path: is a token (its `jti` and `sub`, if it has them) for `sandbox_id` revoked at
    /// `now` (unix seconds)? In memory only. With Redis, [`RevocationError::Unknown`] when the
    /// mirror is over a second old.
    pub fn check_token(
        &self,
        jti: Option<&str>,
        sandbox_id: &str,
        subject: Option<&str>,
        now: u64,
    ) -> Result<Status, RevocationError> {
        if matches!(self.backend, Backend::Redis(_)) && !self.shared.is_fresh() {
            return Err(RevocationError::Unknown);
        }
        let mirror = self.shared.read();
        if mirror.sandboxes.contains(sandbox_id) {
            return Ok(Status::Revoked(RevokedBy::Sandbox));
        }
        if let Some(subject) = subject
            && mirror.subjects > 0
            && mirror
                .sandboxes
                .contains(format!("{SUBJECT_PREFIX}{subject}").as_str())
        {
            return Ok(Status::Revoked(RevokedBy::Subject));
        }
        if let Some(jti) = jti
            && mirror
                .tokens
                .get(jti)
                .is_some_and(|&forget_after| now <= forget_after)
        {
            return Ok(Status::Revoked(RevokedBy::Token));
        }
        Ok(Status::Active)
    }

    /// `"local"` or `"redis"`, for logs.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Local(_) => "local",
            Backend::Redis(_) => "redis",
        }
    }

    /// Times Redis was found to have lost data and this replica wrote its revocations back.
    pub fn restores(&self) -> u64 {
        self.shared.restores.get()
    }

    /// How many revocations the mirror holds.
    pub fn counts(&self) -> RevocationCounts {
        let mirror = self.shared.read();
        RevocationCounts {
            tokens: mirror.tokens.len(),
            sandboxes: mirror.sandboxes.len(),
        }
    }

    /// Drops token revocations that may be forgotten at `now` from the store and the mirror;
    /// returns how many the mirror dropped. Runs by itself (on writes for the local store, every
    /// minute for Redis); public for tests and operators.
    pub async fn prune_expired(&self, now: u64) -> Result<usize, RevocationError> {
        match &self.backend {
            Backend::Local(store) => {
                let (db, lock, shared) = (
                    Arc::clone(&store.db),
                    Arc::clone(&store.write_lock),
                    Arc::clone(&self.shared),
                );
                let pruned = blocking(move || {
                    let _writer = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    LocalStore::prune_disk(&db, now)?;
                    Ok(shared.prune(now))
                })
                .await?;
                store.pruned();
                Ok(pruned)
            }
            Backend::Redis(store) => {
                bounded(WRITE_TIMEOUT, prune_redis(&store.conn, &store.keys, now)).await?;
                Ok(self.shared.prune(now))
            }
        }
    }

    async fn write(&self, change: Change, now: u64) -> Result<(), RevocationError> {
        match &self.backend {
            Backend::Local(store) => {
                let prune_due = store.prune_due();
                let (db, lock, shared) = (
                    Arc::clone(&store.db),
                    Arc::clone(&store.write_lock),
                    Arc::clone(&self.shared),
                );
                let limits = self.limits;
                blocking(move || {
                    LocalStore::write(&db, &lock, &shared, change, now, prune_due, limits)
                })
                .await?;
                if prune_due {
                    store.pruned();
                }
                Ok(())
            }
            Backend::Redis(store) => {
                let seq = bounded(WRITE_TIMEOUT, store.write(&change, now, self.limits)).await?;
                // Read-your-writes on this replica. The refresher re-applies every change in
                // `seq` order anyway, so if another replica's change to the same sandbox landed
                // just before this one, a refresh running right now may briefly show the older
                // state; the next refresh (250 ms) corrects it.
                self.shared.apply_if_behind(seq, change);
                Ok(())
            }
        }
    }
}

/// One revocation write, as applied to the mirror (and logged in Redis).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Token { jti: Box<str>, forget_after: u64 },
    Sandbox { id: Box<str>, revoked: bool },
}

/// The in-memory copy `check` reads.
#[derive(Debug, Default)]
struct Mirror {
    /// jti → unix second after which it may be forgotten.
    tokens: HashMap<Box<str>, u64>,
    /// Revoked sandbox ids, and revoked subjects under [`SUBJECT_PREFIX`].
    sandboxes: HashSet<Box<str>>,
    /// How many of `sandboxes` are subjects (none: the hot path looks no further).
    subjects: usize,
    /// Redis only: the last change (its `seq`) the mirror reflects.
    seq: u64,
}

impl Mirror {
    fn apply(&mut self, change: Change) {
        match change {
            Change::Token { jti, forget_after } => {
                let kept = self.tokens.entry(jti).or_insert(forget_after);
                *kept = (*kept).max(forget_after);
            }
            Change::Sandbox { id, revoked: true } => {
                let subject = id.starts_with(SUBJECT_PREFIX);
                if self.sandboxes.insert(id) && subject {
                    self.subjects += 1;
                }
            }
            Change::Sandbox { id, revoked: false } => {
                if self.sandboxes.remove(&id) && id.starts_with(SUBJECT_PREFIX) {
                    self.subjects -= 1;
                }
            }
        }
    }
}

/// State shared by the handle and the Redis refresh task.
struct Shared {
    mirror: RwLock<Mirror>,
    origin: Instant,
    /// Milliseconds after `origin` when the last successful Redis refresh started.
    refreshed_at_ms: AtomicU64,
    /// Times Redis was found to have lost data and the mirror was written back.
    restores: Counter,
}

impl Shared {
    fn new(restores: Counter) -> Self {
        Shared {
            mirror: RwLock::new(Mirror::default()),
            origin: Instant::now(),
            refreshed_at_ms: AtomicU64::new(0),
            restores,
        }
    }

    // A panic while holding the lock cannot leave the maps half-updated (each change is one map
    // operation), so a poisoned lock is still a consistent mirror.
    fn read(&self) -> RwLockReadGuard<'_, Mirror> {
        self.mirror.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn clock_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mark_refreshed(&self, started_ms: u64) {
        self.refreshed_at_ms
            .fetch_max(started_ms, Ordering::Release);
    }

    fn is_fresh(&self) -> bool {
        let refreshed = self.refreshed_at_ms.load(Ordering::Acquire);
        u128::from(self.clock_ms().saturating_sub(refreshed)) <= MAX_STALENESS.as_millis()
    }

    fn apply_if_behind(&self, seq: u64, change: Change) {
        let mut mirror = self.write();
        if mirror.seq < seq {
            mirror.apply(change);
        }
    }

    /// Removes token entries expired at `now`, a chunk per write-lock hold; the scan itself only
    /// takes the read lock, so `check` keeps running.
    fn prune(&self, now: u64) -> usize {
        let expired: Vec<Box<str>> = self
            .read()
            .tokens
            .iter()
            .filter(|&(_, &forget_after)| forget_after < now)
            .map(|(jti, _)| jti.clone())
            .collect();
        let mut pruned = 0;
        for chunk in expired.chunks(PRUNE_CHUNK) {
            let mut mirror = self.write();
            for jti in chunk {
                // Re-check: a newer revocation may have extended it since the scan.
                if mirror.tokens.get(jti).is_some_and(|&f| f < now) {
                    mirror.tokens.remove(jti);
                    pruned += 1;
                }
            }
        }
        pruned
    }
}

// ---------------------------------------------------------------------------------------------
// Local store

struct LocalStore {
    db: Arc<redb::Database>,
    /// One write at a time, held across the disk commit and the mirror update, so concurrent
    /// revoke/unrevoke of one sandbox end in the same state on disk and in memory.
    write_lock: Arc<Mutex<()>>,
    last_prune: Mutex<Instant>,
}

impl LocalStore {
    /// Drops expired entries from the file, then reads it all.
    fn load(&self, now: u64) -> Result<Mirror, RevocationError> {
        Self::prune_disk(&self.db, now)?;
        let txn = self.db.begin_write().map_err(disk)?;
        let mut mirror = Mirror::default();
        {
            let tokens = txn.open_table(TOKENS).map_err(disk)?;
            for entry in tokens.iter().map_err(disk)? {
                let (jti, forget_after) = entry.map_err(disk)?;
                mirror
                    .tokens
                    .insert(jti.value().into(), forget_after.value());
            }
            let sandboxes = txn.open_table(SANDBOXES).map_err(disk)?;
            for entry in sandboxes.iter().map_err(disk)? {
                let (id, _) = entry.map_err(disk)?;
                mirror.subjects += usize::from(id.value().starts_with(SUBJECT_PREFIX));
                mirror.sandboxes.insert(id.value().into());
            }
        }
        // Commits the tables' creation on a new file; nothing else changed.
        txn.commit().map_err(disk)?;
        Ok(mirror)
    }

    fn prune_disk(db: &redb::Database, now: u64) -> Result<(), RevocationError> {
        let txn = db.begin_write().map_err(disk)?;
        txn.open_table(TOKENS)
            .map_err(disk)?
            .retain(|_, forget_after| forget_after >= now)
            .map_err(disk)?;
        txn.commit().map_err(disk)
    }

    /// Commits `change` to the file (fsync), then applies it to the mirror. Blocking.
    fn write(
        db: &redb::Database,
        lock: &Mutex<()>,
        shared: &Shared,
        change: Change,
        now: u64,
        prune_due: bool,
        limits: Limits,
    ) -> Result<(), RevocationError> {
        let _writer = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (adds_token, adds_sandbox) = {
            let mirror = shared.read();
            match &change {
                Change::Token { jti, .. } => (
                    !mirror.tokens.contains_key(jti) && mirror.tokens.len() >= limits.tokens,
                    false,
                ),
                Change::Sandbox { id, revoked } => (
                    false,
                    *revoked
                        && !mirror.sandboxes.contains(id)
                        && mirror.sandboxes.len() >= limits.sandboxes,
                ),
            }
        };
        // `adds_*`: the change would add an entry to a full map.
        if adds_sandbox {
            return Err(full("sandboxes", limits.sandboxes));
        }
        if prune_due || adds_token {
            Self::prune_disk(db, now)?;
            shared.prune(now);
            if adds_token && shared.read().tokens.len() >= limits.tokens {
                return Err(full("tokens", limits.tokens));
            }
        }

        let txn = db.begin_write().map_err(disk)?;
        match &change {
            Change::Token { jti, forget_after } => {
                let mut tokens = txn.open_table(TOKENS).map_err(disk)?;
                let kept = tokens.get(&**jti).map_err(disk)?.map(|v| v.value());
                let forget_after = kept.map_or(*forget_after, |k| k.max(*forget_after));
                tokens.insert(&**jti, forget_after).map_err(disk)?;
            }
            Change::Sandbox { id, revoked: true } => {
                let mut sandboxes = txn.open_table(SANDBOXES).map_err(disk)?;
                sandboxes.insert(&**id, ()).map_err(disk)?;
            }
            Change::Sandbox { id, revoked: false } => {
                let mut sandboxes = txn.open_table(SANDBOXES).map_err(disk)?;
                sandboxes.remove(&**id).map_err(disk)?;
            }
        }
        txn.commit().map_err(disk)?;
        shared.write().apply(change);
        Ok(())
    }

    fn prune_due(&self) -> bool {
        self.last_prune
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            >= PRUNE_EVERY
    }

    fn pruned(&self) {
        *self
            .last_prune
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }
}

fn disk(e: impl Into<redb::Error>) -> RevocationError {
    RevocationError::Io(e.into().to_string())
}

fn full(what: &str, limit: usize) -> RevocationError {
    RevocationError::Invalid(format!(
        "too many revoked {what} (limit {limit}); lift or let some expire first"
    ))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RevocationError> + Send + 'static,
) -> Result<T, RevocationError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RevocationError::Io(format!("revocation store task failed: {e}")))?
}

// ---------------------------------------------------------------------------------------------
// Redis store

/// One write, atomically: apply it (refusing past the limit), count it in `seq`, log it in
/// `changes` (trimmed to the last ARGV[7] entries). Returns its `seq`, or 0 when refused as full.
/// A log entry is `seq|op|forget_after|subject`; the subject goes last, so it may hold `|`.
const WRITE_SCRIPT: &str = r"
-- KEYS: revoked-jtis, revoked-sandboxes, seq, changes, epoch
-- ARGV: op ('t', 's+', 's-'), subject, forget_after, now, limit, epoch candidate, log length
redis.call('SET', KEYS[5], ARGV[6], 'NX')
local op, subject, forget_after = ARGV[1], ARGV[2], ARGV[3]
local limit = tonumber(ARGV[5])
if op == 't' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])
  local current = redis.call('ZSCORE', KEYS[1], subject)
  if current then
    if tonumber(current) > tonumber(forget_after) then forget_after = current end
  elseif redis.call('ZCARD', KEYS[1]) >= limit then
    return 0
  end
  redis.call('ZADD', KEYS[1], forget_after, subject)
elseif op == 's+' then
  if redis.call('SISMEMBER', KEYS[2], subject) == 0 and redis.call('SCARD', KEYS[2]) >= limit then
    return 0
  end
  redis.call('SADD', KEYS[2], subject)
else
  redis.call('SREM', KEYS[2], subject)
end
local n = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[4], n, n .. '|' .. op .. '|' .. forget_after .. '|' .. subject)
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[7]) + 1))
return n
";

/// Writes revocations a replica holds back into Redis after it lost them: each token (keeping the
/// later expiry) and sandbox Redis lacks is added and logged like a write. Returns how many were
/// added and the epoch afterwards.
const RESTORE_SCRIPT: &str = r"
-- KEYS: revoked-jtis, revoked-sandboxes, seq, changes, epoch
-- ARGV: epoch candidate, the epoch to replace ('' for none: only set one if missing), log
--       length, then (op, subject, forget_after) triples, op 't' (token) or 's+' (sandbox)
local epoch = redis.call('GET', KEYS[5])
if not epoch or (ARGV[2] ~= '' and epoch == ARGV[2]) then
  redis.call('SET', KEYS[5], ARGV[1])
end
local written = 0
for i = 4, #ARGV, 3 do
  local op, subject, forget_after = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local added = false
  if op == 't' then
    local current = redis.call('ZSCORE', KEYS[1], subject)
    if not current or tonumber(current) < tonumber(forget_after) then
      redis.call('ZADD', KEYS[1], forget_after, subject)
      added = true
    end
  else
    added = redis.call('SADD', KEYS[2], subject) == 1
  end
  if added then
    local n = redis.call('INCR', KEYS[3])
    redis.call('ZADD', KEYS[4], n, n .. '|' .. op .. '|' .. forget_after .. '|' .. subject)
    written = written + 1
  end
end
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[3]) + 1))
return {written, redis.call('GET', KEYS[5])}
";

#[derive(Debug, Clone)]
struct Keys {
    tokens: String,
    sandboxes: String,
    seq: String,
    changes: String,
    epoch: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            tokens: format!("{prefix}revoked-jtis"),
            sandboxes: format!("{prefix}revoked-sandboxes"),
            seq: format!("{prefix}seq"),
            changes: format!("{prefix}changes"),
            epoch: format!("{prefix}epoch"),
        }
    }
}

/// The connection to Redis, shared by writes and the refresh task. The connection manager
/// reconnects when the connection breaks; [`RedisConn::renew`] replaces it when Redis has been
/// silent for a while without the connection breaking (a dead peer behind a partition, a moved
/// address), which the manager does not notice.
struct RedisConn {
    client: redis::Client,
    current: ArcSwap<ConnectionManager>,
}

impl RedisConn {
    fn config() -> ConnectionManagerConfig {
        // Short connection attempts (the refresh task retries every tick anyway); the response
        // timeout only backstops ours (`bounded`), which are shorter except for a full load.
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(RELOAD_TIMEOUT))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(1)
    }

    async fn connect(client: redis::Client) -> Result<Self, RevocationError> {
        let manager = ConnectionManager::new_with_config(client.clone(), Self::config())
            .await
            .map_err(redis_error)?;
        Ok(RedisConn {
            client,
            current: ArcSwap::from_pointee(manager),
        })
    }

    /// A handle to the current connection (cheap: the manager is reference-counted).
    fn get(&self) -> ConnectionManager {
        (**self.current.load()).clone()
    }

    /// Swaps in a new connection, established on first use.
    fn renew(&self) -> Result<(), RevocationError> {
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), Self::config())
            .map_err(redis_error)?;
        self.current.store(Arc::new(manager));
        Ok(())
    }
}

struct RedisStore {
    conn: Arc<RedisConn>,
    keys: Keys,
    script: redis::Script,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl RedisStore {
    async fn write(
        &self,
        change: &Change,
        now: u64,
        limits: Limits,
    ) -> Result<u64, RevocationError> {
        let (op, subject, forget_after, limit) = match change {
            Change::Token { jti, forget_after } => ("t", jti, *forget_after, limits.tokens),
            Change::Sandbox { id, revoked: true } => ("s+", id, 0, limits.sandboxes),
            Change::Sandbox { id, revoked: false } => ("s-", id, 0, limits.sandboxes),
        };
        let write = async {
            self.script
                .key(&self.keys.tokens)
                .key(&self.keys.sandboxes)
                .key(&self.keys.seq)
                .key(&self.keys.changes)
                .key(&self.keys.epoch)
                .arg(op)
                .arg(&**subject)
                .arg(forget_after)
                .arg(now)
                .arg(limit)
                .arg(random_epoch())
                .arg(CHANGE_LOG_LEN)
                .invoke_async(&mut self.conn.get())
                .await
                .map_err(redis_error)
        };
        let seq: u64 = traced(
            tracing::debug_span!(
                "redis.write",
                otel.kind = "client",
                db.system.name = "redis",
                db.operation.name = "EVALSHA",
                otel.status_code = tracing::field::Empty
            ),
            write,
        )
        .await?;
        if seq == 0 {
            return Err(match change {
                Change::Token { .. } => full("tokens", limits.tokens),
                Change::Sandbox { .. } => full("sandboxes", limits.sandboxes),
            });
        }
        Ok(seq)
    }
}

fn redis_error(e: redis::RedisError) -> RevocationError {
    RevocationError::Redis(e.to_string())
}

/// Says what was being done when Redis failed.
fn context(what: &str, e: RevocationError) -> RevocationError {
    match e {
        RevocationError::Redis(message) => RevocationError::Redis(format!("{what}: {message}")),
        other => other,
    }
}

/// Runs `work` with a deadline; a timeout is a Redis failure.
async fn bounded<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, RevocationError>>,
) -> Result<T, RevocationError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(RevocationError::Redis(format!(
            "no answer within {} ms",
            limit.as_millis()
        )))
    })
}

async fn prune_redis(conn: &RedisConn, keys: &Keys, now: u64) -> Result<(), RevocationError> {
    let prune = async {
        redis::cmd("ZREMRANGEBYSCORE")
            .arg(&keys.tokens)
            .arg("-inf")
            .arg(format!("({now}"))
            .query_async::<()>(&mut conn.get())
            .await
            .map_err(redis_error)
    };
    traced(
        tracing::debug_span!(
            "redis.prune",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = "ZREMRANGEBYSCORE",
            otel.status_code = tracing::field::Empty
        ),
        prune,
    )
    .await
}

/// Runs one Redis call in `span` (a span for export only, never logged; `debug`, but the mirror's
/// once-a-second poll at `trace`, not exported), marked an error if it failed. Neither keys nor
/// values are recorded.
async fn traced<T>(
    span: tracing::Span,
    call: impl Future<Output = Result<T, RevocationError>>,
) -> Result<T, RevocationError> {
    use tracing::Instrument as _;
    let result = call.instrument(span.clone()).await;
    if result.is_err() && !span.is_disabled() {
        span.record("otel.status_code", "error");
    }
    result
}

/// The refresh task's view of Redis.
struct RedisLink {
    conn: Arc<RedisConn>,
    keys: Keys,
    /// The epoch the mirror was loaded under.
    epoch: Option<String>,
}

impl RedisLink {
    /// Brings the mirror up to date with the changes logged since its `seq`, or reloads it.
    async fn refresh(&mut self, shared: &Shared, now: u64) -> Result<(), RevocationError> {
        let last = shared.read().seq;
        let mut read = redis::pipe();
        read.atomic()
            .cmd("GET")
            .arg(&self.keys.epoch)
            .cmd("GET")
            .arg(&self.keys.seq)
            .cmd("ZRANGEBYSCORE")
            .arg(&self.keys.changes)
            .arg(format!("({last}"))
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(CHANGE_LOG_LEN);
        let (epoch, seq, changes): (Option<String>, Option<u64>, Vec<String>) = traced(
            tracing::trace_span!(
                "redis.refresh",
                otel.kind = "client",
                db.system.name = "redis",
                db.operation.name = "MULTI",
                otel.status_code = tracing::field::Empty
            ),
            bounded(REFRESH_TIMEOUT, async {
                read.query_async(&mut self.conn.get())
                    .await
                    .map_err(redis_error)
            }),
        )
        .await?;
        let seq = seq.unwrap_or(0);
        if epoch.is_none() || epoch != self.epoch || seq < last {
            // Redis lost its data (restart without persistence, flush, failover to a replica
            // that was behind), or another replica already found that out and restored its copy:
            // the mirror is right, Redis is not.
            let rolled_back = epoch.is_some() && epoch == self.epoch;
            return self
                .recover(shared, now, rolled_back, epoch.is_none())
                .await;
        }
        if seq == last {
            return Ok(());
        }
        match parse_changes(&changes, last, seq) {
            Some(changes) => {
                let mut mirror = shared.write();
                // A write through this replica may have been applied early; re-applying in order
                // gives the same end state as everyone else.
                for change in changes {
                    mirror.apply(change);
                }
                mirror.seq = seq;
                Ok(())
            }
            // The log was trimmed past us (or holds something we cannot read): reload.
            None => {
                let epoch = self.epoch.clone();
                bounded(RELOAD_TIMEOUT, self.reload(shared, now, epoch.as_deref())).await
            }
        }
    }

    /// Writes the mirror back into Redis, then reloads from it. The mirror is left untouched
    /// until the reload, which then holds everything it held (and whatever Redis gained).
    async fn recover(
        &mut self,
        shared: &Shared,
        now: u64,
        rolled_back: bool,
        missing: bool,
    ) -> Result<(), RevocationError> {
        let (written, epoch) =
            bounded(RESTORE_TIMEOUT, self.restore(shared, now, rolled_back)).await?;
        bounded(RELOAD_TIMEOUT, self.reload(shared, now, Some(&epoch))).await?;
        shared.restores.inc();
        tracing::error!(
            backend = "redis",
            written,
            cause = if missing {
                "generation marker missing (restarted without persistence, or flushed)"
            } else if rolled_back {
                "change counter went backwards (failover to a replica that was behind)"
            } else {
                "generation marker changed (another replica restored first, or another Redis)"
            },
            "Redis lost revocations: this replica wrote back every revocation it held; make \
             Redis persist its data (appendonly yes) and never evict these keys"
        );
        Ok(())
    }

    /// Writes every revocation the mirror holds into Redis (tokens not yet forgotten, keeping the
    /// later expiry; sandboxes), logging each one Redis lacked as a change so that replicas
    /// already on the current epoch pick it up. `fresh_epoch`: replace the epoch if it is still
    /// the mirror's (Redis went back in time under it, so its change numbers are reused; a
    /// replica that noticed first has already replaced it), else set one only if there is none.
    /// Returns how many were written and the epoch Redis holds afterwards.
    async fn restore(
        &self,
        shared: &Shared,
        now: u64,
        fresh_epoch: bool,
    ) -> Result<(u64, String), RevocationError> {
        // (op, subject, forget_after), copied so the lock is not held across the writes.
        let entries: Vec<(&str, Box<str>, u64)> = {
            let mirror = shared.read();
            mirror
                .tokens
                .iter()
                .filter(|&(_, &forget_after)| forget_after >= now)
                .map(|(jti, &forget_after)| ("t", jti.clone(), forget_after))
                .chain(mirror.sandboxes.iter().map(|id| ("s+", id.clone(), 0)))
                .collect()
        };
        let script = redis::Script::new(RESTORE_SCRIPT);
        let mut written = 0;
        let mut epoch = String::new();
        // At least one call, even with nothing to write: it sets the epoch.
        let mut chunks = entries.chunks(RESTORE_CHUNK).peekable();
        let empty: &[(&str, Box<str>, u64)] = &[];
        let mut first = true;
        while first || chunks.peek().is_some() {
            let chunk = chunks.next().unwrap_or(empty);
            let mut call = script.prepare_invoke();
            call.key(&self.keys.tokens)
                .key(&self.keys.sandboxes)
                .key(&self.keys.seq)
                .key(&self.keys.changes)
                .key(&self.keys.epoch)
                .arg(random_epoch())
                .arg(match &self.epoch {
                    Some(old) if first && fresh_epoch => old.as_str(),
                    _ => "",
                })
                .arg(CHANGE_LOG_LEN);
            for (op, subject, forget_after) in chunk {
                call.arg(*op).arg(&**subject).arg(*forget_after);
            }
            let (n, current): (u64, String) = traced(
                tracing::debug_span!(
                    "redis.restore",
                    otel.kind = "client",
                    db.system.name = "redis",
                    db.operation.name = "EVALSHA",
                    otel.status_code = tracing::field::Empty
                ),
                async {
                    call.invoke_async(&mut self.conn.get())
                        .await
                        .map_err(redis_error)
                },
            )
            .await?;
            written += n;
            epoch = current;
            first = false;
        }
        Ok((written, epoch))
    }

    /// Replaces the mirror with everything in Redis. `expected`: the epoch the data must be
    /// under (`None`, at start: whatever Redis holds); when that is the mirror's own epoch, the
    /// data must not be behind the mirror either. Otherwise Redis changed under us: the mirror
    /// is kept and the next refresh finds out why.
    async fn reload(
        &mut self,
        shared: &Shared,
        now: u64,
        expected: Option<&str>,
    ) -> Result<(), RevocationError> {
        let mut load = redis::pipe();
        load.atomic()
            .cmd("SET")
            .arg(&self.keys.epoch)
            .arg(random_epoch())
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&self.keys.epoch)
            .cmd("GET")
            .arg(&self.keys.seq)
            .cmd("ZRANGEBYSCORE")
            .arg(&self.keys.tokens)
            .arg(now)
            .arg("+inf")
            .arg("WITHSCORES")
            .cmd("SMEMBERS")
            .arg(&self.keys.sandboxes);
        let (epoch, seq, tokens, sandboxes): Snapshot = traced(
            tracing::debug_span!(
                "redis.reload",
                otel.kind = "client",
                db.system.name = "redis",
                db.operation.name = "MULTI",
                otel.status_code = tracing::field::Empty
            ),
            async {
                load.query_async(&mut self.conn.get())
                    .await
                    .map_err(redis_error)
            },
        )
        .await?;
        if let Some(expected) = expected {
            let behind =
                self.epoch.as_deref() == Some(expected) && seq.unwrap_or(0) < shared.read().seq;
            if epoch.as_deref() != Some(expected) || behind {
                return Err(RevocationError::Redis(
                    "the revocations changed generation during a reload; the mirror is kept".into(),
                ));
            }
        }
        let sandboxes: HashSet<Box<str>> =
            sandboxes.into_iter().map(String::into_boxed_str).collect();
        let mirror = Mirror {
            tokens: tokens
                .into_iter()
                .map(|(jti, score)| (jti.into_boxed_str(), score_to_secs(score)))
                .collect(),
            subjects: sandboxes
                .iter()
                .filter(|id| id.starts_with(SUBJECT_PREFIX))
                .count(),
            sandboxes,
            seq: seq.unwrap_or(0),
        };
        let old = std::mem::replace(&mut *shared.write(), mirror);
        drop(old); // outside the lock: freeing a large map takes a while
        self.epoch = epoch;
        Ok(())
    }
}

/// A full load: epoch, seq, (jti, forget-after) pairs, sandbox ids.
type Snapshot = (Option<String>, Option<u64>, Vec<(String, f64)>, Vec<String>);

/// The changes `last+1 ..= seq`, in order, or `None` if any is missing or unreadable.
fn parse_changes(members: &[String], last: u64, seq: u64) -> Option<Vec<Change>> {
    let mut expected = last + 1;
    let mut changes = Vec::with_capacity(members.len());
    for member in members {
        let mut parts = member.splitn(4, '|');
        let n: u64 = parts.next()?.parse().ok()?;
        let op = parts.next()?;
        let forget_after: u64 = parts.next()?.parse().ok()?;
        let subject: Box<str> = parts.next()?.into();
        if n != expected {
            return None;
        }
        expected += 1;
        changes.push(match op {
            "t" => Change::Token {
                jti: subject,
                forget_after,
            },
            "s+" => Change::Sandbox {
                id: subject,
                revoked: true,
            },
            "s-" => Change::Sandbox {
                id: subject,
                revoked: false,
            },
            _ => return None,
        });
    }
    (expected == seq + 1).then_some(changes)
}

/// Redis scores are doubles; ours are whole seconds below 2^53, so this is exact.
fn score_to_secs(score: f64) -> u64 {
    if score.is_finite() && score > 0.0 {
        // Saturating float-to-int conversion; the value is a whole number in range.
        score as u64
    } else {
        0
    }
}

async fn refresh_loop(shared: Arc<Shared>, mut link: RedisLink) {
    let mut ticker = tokio::time::interval(REFRESH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when refreshes have been failing (`None`: they succeed), and since the last new
    // connection.
    let mut failing_since: Option<Instant> = None;
    let mut renewed = Instant::now();
    let mut last_prune = Instant::now();
    loop {
        ticker.tick().await;
        let started = shared.clock_ms();
        let now = unix_now();
        if let Err(error) = link.refresh(&shared, now).await {
            let since = *failing_since.get_or_insert_with(|| {
                tracing::error!(
                    backend = "redis",
                    %error,
                    "revocation store unreachable: requests fail closed (503) from one second \
                     after the last good refresh until it answers"
                );
                Instant::now()
            });
            if since.elapsed() >= RENEW_AFTER && renewed.elapsed() >= RENEW_AFTER {
                renewed = Instant::now();
                tracing::debug!(backend = "redis", "reconnecting to the revocation store");
                if let Err(error) = link.conn.renew() {
                    tracing::debug!(backend = "redis", %error, "cannot reconnect");
                }
            }
            continue;
        }
        shared.mark_refreshed(started);
        if let Some(since) = failing_since.take() {
            tracing::info!(
                backend = "redis",
                outage_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                "revocation store answering again; revocation checks resumed"
            );
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            shared.prune(now);
            if let Err(error) =
                bounded(WRITE_TIMEOUT, prune_redis(&link.conn, &link.keys, now)).await
            {
                tracing::warn!(backend = "redis", %error, "cannot prune expired token revocations");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// Where revoked subjects sit in the sandbox revocations' set (see
/// [`Revocations::revoke_subject`]).
const SUBJECT_PREFIX: &str = "sub:";

/// Longest `sub` revoked (a token's `sub` is read up to 1 KiB).
pub const MAX_SUBJECT_BYTES: usize = 1024;

fn validate_subject(subject: &str) -> Result<(), RevocationError> {
    if subject.is_empty()
        || subject.len() > MAX_SUBJECT_BYTES
        || subject.chars().any(char::is_control)
    {
        return Err(RevocationError::Invalid(format!(
            "a subject must be 1 to {MAX_SUBJECT_BYTES} bytes of printable characters"
        )));
    }
    Ok(())
}

fn validate_jti(jti: &str) -> Result<(), RevocationError> {
    if jti.is_empty() || jti.len() > MAX_JTI_BYTES || jti.chars().any(char::is_control) {
        return Err(RevocationError::Invalid(format!(
            "a jti must be 1 to {MAX_JTI_BYTES} bytes of printable characters"
        )));
    }
    Ok(())
}

/// When a revocation of a token expiring at `expires_at` may be forgotten.
fn forget_after(expires_at: u64, now: u64) -> Result<u64, RevocationError> {
    if expires_at > MAX_EXPIRES_AT {
        return Err(RevocationError::Invalid(
            "expires_at is past the year 9999".into(),
        ));
    }
    if expires_at < now {
        return Err(RevocationError::Invalid(format!(
            "expires_at {expires_at} is {} s in the past: such a revocation would revoke \
             nothing. Give the token's own exp, or leave expires_at out to keep the revocation \
             for good",
            now - expires_at
        )));
    }
    Ok(expires_at + EXPIRY_GRACE_SECS)
}

fn validate_sandbox(sandbox_id: &str) -> Result<(), RevocationError> {
    if !is_uuid(sandbox_id) {
        return Err(RevocationError::Invalid(
            "a sandbox id must be a lower-case UUID".into(),
        ));
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new epoch for whoever finds none: random, so data lost and rewritten never looks unchanged.
fn random_epoch() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    use super::*;

    const SANDBOX: &str = "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93";
    const OTHER_SANDBOX: &str = "7d5c8a1f-0e93-4f3a-9e2b-0b8f2a4e6c1d";

    const ACTIVE: Result<Status, RevocationError> = Ok(Status::Active);
    const TOKEN_REVOKED: Result<Status, RevocationError> = Ok(Status::Revoked(RevokedBy::Token));
    const SANDBOX_REVOKED: Result<Status, RevocationError> =
        Ok(Status::Revoked(RevokedBy::Sandbox));

    fn store_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("revocations.redb")
    }

    fn open(path: &Path) -> Revocations {
        Revocations::open_local(path).expect("open the local store")
    }

    #[test]
    fn revocations_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Revocations>();
    }

    #[tokio::test]
    async fn local_revoked_token_is_revoked_until_its_exp_plus_grace() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&store_path(&dir));
        assert_eq!(store.backend(), "local");
        let now = unix_now();
        let exp = now + 600;

        store.revoke_token("jti-1", Some(exp)).await.unwrap();

        assert_eq!(store.check(Some("jti-1"), SANDBOX, now), TOKEN_REVOKED);
        // The jti is revoked whatever sandbox the token names.
        assert_eq!(
            store.check(Some("jti-1"), OTHER_SANDBOX, now),
            TOKEN_REVOKED
        );
        assert_eq!(
            store.check(Some("jti-1"), SANDBOX, exp + EXPIRY_GRACE_SECS),
            TOKEN_REVOKED
        );
        assert_eq!(
            store.check(Some("jti-1"), SANDBOX, exp + EXPIRY_GRACE_SECS + 1),
            ACTIVE
        );
        assert_eq!(store.check(Some("jti-2"), SANDBOX, now), ACTIVE);
        assert_eq!(store.check(None, SANDBOX, now), ACTIVE);
        assert_eq!(
            store.counts(),
            RevocationCounts {
                tokens: 1,
                sandboxes: 0
            }
        );
    }

    #[tokio::test]
    async fn local_revoked_sandbox_stops_every_token_until_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&store_path(&dir));
        let now = unix_now();
        store.revoke_token("jti-1", Some(now + 600)).await.unwrap();

        store.revoke_sandbox(SANDBOX).await.unwrap();
        assert_eq!(store.check(Some("jti-2"), SANDBOX, now), SANDBOX_REVOKED);
        assert_eq!(store.check(None, SANDBOX, now), SANDBOX_REVOKED);
        assert_eq!(store.check(Some("jti-2"), OTHER_SANDBOX, now), ACTIVE);
        // Revoking twice is harmless.
        store.revoke_sandbox(SANDBOX).await.unwrap();

        store.unrevoke_sandbox(SANDBOX).await.unwrap();
        assert_eq!(store.check(Some("jti-2"), SANDBOX, now), ACTIVE);
        // A token revoked by jti stays revoked when its sandbox is lifted.
        assert_eq!(store.check(Some("jti-1"), SANDBOX, now), TOKEN_REVOKED);
        // Lifting a sandbox that is not revoked is harmless.
        store.unrevoke_sandbox(OTHER_SANDBOX).await.unwrap();
    }

    #[tokio::test]
    async fn local_revoked_subject_stops_their_tokens_for_every_sandbox_until_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(&dir);
        let store = open(&path);
        let now = unix_now();
        let subject_revoked = Ok(Status::Revoked(RevokedBy::Subject));
        // Any printable text is a subject, a separator or a UUID included.
        for subject in ["alice@example.com", "a|b sub:x", SANDBOX] {
            store.revoke_subject(subject).await.unwrap();
            for sandbox in [SANDBOX, OTHER_SANDBOX] {
                assert_eq!(
                    store.check_token(Some("j"), sandbox, Some(subject), now),
                    subject_revoked
                );
            }
        }
        assert_eq!(
            store.check_token(Some("j"), SANDBOX, Some("bob"), now),
            ACTIVE
        );
        assert_eq!(store.check_token(Some("j"), SANDBOX, None, now), ACTIVE);
        // A subject that reads like a sandbox id revokes no sandbox.
        assert_eq!(store.check(None, SANDBOX, now), ACTIVE);
        // Kept across a restart.
        drop(store);
        let store = open(&path);
        assert_eq!(
            store.check_token(None, SANDBOX, Some("alice@example.com"), now),
            subject_revoked
        );
        store.unrevoke_subject("alice@example.com").await.unwrap();
        assert_eq!(
            store.check_token(None, SANDBOX, Some("alice@example.com"), now),
            ACTIVE
        );
        assert_eq!(
            store.check_token(None, SANDBOX, Some("a|b sub:x"), now),
            subject_revoked
        );
        for bad in ["", "line\nbreak", &"x".repeat(MAX_SUBJECT_BYTES + 1)] {
            assert!(matches!(
                store.revoke_subject(bad).await,
                Err(RevocationError::Invalid(_))
            ));
        }
    }

    #[tokio::test]
    async fn local_expired_revocations_are_active_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(&dir);
        let store = open(&path);
        let now = unix_now();
        store.revoke_token("short", Some(now + 10)).await.unwrap();
        store.revoke_token("long", Some(now + 3600)).await.unwrap();
        store.revoke_token("unbounded", None).await.unwrap();
        assert_eq!(store.counts().tokens, 3);

        let later = now + 10 + EXPIRY_GRACE_SECS + 1;
        assert_eq!(store.check(Some("short"), SANDBOX, later), ACTIVE);
        assert_eq!(store.check(Some("long"), SANDBOX, later), TOKEN_REVOKED);

        assert_eq!(store.prune_expired(later).await.unwrap(), 1);
        assert_eq!(store.counts().tokens, 2);
        assert_eq!(store.check(Some("long"), SANDBOX, later), TOKEN_REVOKED);

        // Pruned from the file too.
        drop(store);
        let store = open(&path);
        {
            let raw = store.shared.read();
            assert!(!raw.tokens.contains_key("short"));
            assert!(raw.tokens.contains_key("long"));
        }

        // A revocation is never pruned while its token may still be accepted: up to exp plus
        // the largest clock skew the verifier allows (10 minutes).
        let exp = now + 3600;
        assert_eq!(store.prune_expired(exp + 600).await.unwrap(), 0);
        assert_eq!(store.check(Some("long"), SANDBOX, exp + 600), TOKEN_REVOKED);
        assert_eq!(store.prune_expired(exp + 601).await.unwrap(), 1);
        assert_eq!(
            store.check(Some("unbounded"), SANDBOX, exp + 601),
            TOKEN_REVOKED
        );
    }

    #[tokio::test]
    async fn an_expiry_in_the_past_is_refused_and_revokes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&store_path(&dir));
        let now = unix_now();
        for past in [now - 1, now - EXPIRY_GRACE_SECS - 1, 1] {
            let refused = store.revoke_token("jti-1", Some(past)).await;
            assert!(
                matches!(&refused, Err(RevocationError::Invalid(m))
                    if m.contains("expires_at") && m.contains("past") && !m.contains("--")),
                "{refused:?}"
            );
        }
        assert_eq!(store.counts().tokens, 0);
        // Now itself is not the past.
        store.revoke_token("jti-1", Some(now)).await.unwrap();
        assert_eq!(store.check(Some("jti-1"), SANDBOX, now), TOKEN_REVOKED);
    }

    #[tokio::test]
    async fn local_revocation_of_unknown_expiry_is_kept_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(&dir);
        let now = unix_now();
        // Past the 366 days revocations used to be kept, past any exp a token may carry.
        let far = MAX_EXPIRES_AT + EXPIRY_GRACE_SECS + 1;
        {
            let store = open(&path);
            store.revoke_token("unbounded", None).await.unwrap();
            // Revoking it again with an expiry does not shorten it; the other way round extends.
            store
                .revoke_token("unbounded", Some(now + 60))
                .await
                .unwrap();
            store.revoke_token("bounded", Some(now + 60)).await.unwrap();
            store.revoke_token("bounded", None).await.unwrap();
            for jti in ["unbounded", "bounded"] {
                assert_eq!(
                    store.check(Some(jti), SANDBOX, now + 367 * 86_400),
                    TOKEN_REVOKED
                );
                assert_eq!(store.check(Some(jti), SANDBOX, far), TOKEN_REVOKED);
            }
            assert_eq!(store.prune_expired(far).await.unwrap(), 0);
        }
        let store = open(&path);
        assert_eq!(store.check(Some("unbounded"), SANDBOX, far), TOKEN_REVOKED);
        assert_eq!(store.check(Some("bounded"), SANDBOX, far), TOKEN_REVOKED);
    }

    #[tokio::test]
    async fn local_revoking_again_keeps_the_later_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&store_path(&dir));
        let now = unix_now();
        store.revoke_token("jti-1", Some(now + 3600)).await.unwrap();
        store.revoke_token("jti-1", Some(now + 60)).await.unwrap();
        let late = now + 60 + EXPIRY_GRACE_SECS + 1;
        assert_eq!(store.check(Some("jti-1"), SANDBOX, late), TOKEN_REVOKED);
    }

    #[tokio::test]
    async fn local_revocations_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(&dir);
        let now = unix_now();
        {
            let store = open(&path);
            store.revoke_token("jti-1", Some(now + 600)).await.unwrap();
            store.revoke_sandbox(SANDBOX).await.unwrap();
            store.revoke_sandbox(OTHER_SANDBOX).await.unwrap();
            store.unrevoke_sandbox(OTHER_SANDBOX).await.unwrap();
        }

        let store = open(&path);
        assert_eq!(
            store.check(Some("jti-1"), OTHER_SANDBOX, now),
            TOKEN_REVOKED
        );
        assert_eq!(store.check(None, SANDBOX, now), SANDBOX_REVOKED);
        assert_eq!(store.check(None, OTHER_SANDBOX, now), ACTIVE);

        store.unrevoke_sandbox(SANDBOX).await.unwrap();
        drop(store);
        let store = open(&path);
        assert_eq!(store.check(None, SANDBOX, now), ACTIVE);
        assert_eq!(
            store.counts(),
            RevocationCounts {
                tokens: 1,
                sandboxes: 0
            }
        );
    }

    #[tokio::test]
    async fn invalid_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&store_path(&dir));
        let exp = unix_now() + 600;
        let invalid =
            |r: Result<(), RevocationError>| matches!(r, Err(RevocationError::Invalid(_)));

        assert!(invalid(store.revoke_token("", Some(exp)).await));
        assert!(invalid(
            store
                .revoke_token(&"j".repeat(MAX_JTI_BYTES + 1), Some(exp))
                .await
        ));
        assert!(invalid(store.revoke_token("a\nb", Some(exp)).await));
        assert!(invalid(store.revoke_token("a\u{7f}b", Some(exp)).await));
        assert!(invalid(
            store.revoke_token("jti", Some(MAX_EXPIRES_AT + 1)).await
        ));
        for bad in [
            "",
            "not-a-uuid",
            "0B8F2A4E-6C1D-4F3A-9E2B-7D5C8A1F0E93",
            "0b8f2a4e6c1d4f3a9e2b7d5c8a1f0e93",
            "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93 ",
        ] {
            assert!(invalid(store.revoke_sandbox(bad).await), "{bad:?}");
            assert!(invalid(store.unrevoke_sandbox(bad).await), "{bad:?}");
        }
        assert_eq!(
            store.counts(),
            RevocationCounts {
                tokens: 0,
                sandboxes: 0
            }
        );

        // The limits themselves are fine.
        store
            .revoke_token(&"j".repeat(MAX_JTI_BYTES), Some(exp))
            .await
            .unwrap();
        store
            .revoke_token("jti with spaces/ünïcödé", Some(exp))
            .await
            .unwrap();
        store
            .revoke_token("jti", Some(MAX_EXPIRES_AT))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn local_store_refuses_entries_beyond_its_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&store_path(&dir));
        store.limits = Limits {
            tokens: 2,
            sandboxes: 1,
        };
        let now = unix_now();
        store.revoke_token("expiring", Some(now + 1)).await.unwrap();
        store.revoke_token("jti-1", Some(now + 600)).await.unwrap();
        // Full, but an entry expired by now makes room.
        let later = now + 1 + EXPIRY_GRACE_SECS + 1;
        store.prune_expired(later).await.unwrap();
        store.revoke_token("jti-2", Some(now + 600)).await.unwrap();
        let refused = store.revoke_token("jti-3", Some(now + 600)).await;
        assert!(
            matches!(&refused, Err(RevocationError::Invalid(m)) if m.contains("too many")),
            "{refused:?}"
        );
        // Renewing one already there is fine.
        store.revoke_token("jti-1", Some(now + 900)).await.unwrap();
        assert_eq!(store.check(Some("jti-3"), SANDBOX, now), ACTIVE);

        store.revoke_sandbox(SANDBOX).await.unwrap();
        assert!(matches!(
            store.revoke_sandbox(OTHER_SANDBOX).await,
            Err(RevocationError::Invalid(_))
        ));
        store.revoke_sandbox(SANDBOX).await.unwrap();
        store.unrevoke_sandbox(SANDBOX).await.unwrap();
        store.revoke_sandbox(OTHER_SANDBOX).await.unwrap();
    }

    #[test]
    fn local_store_is_refused_when_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(&dir);
        let _first = open(&path);
        // redb locks the file: a second holder (another process, or a second replica pointed at
        // the same file) is refused rather than corrupting it.
        assert!(matches!(
            Revocations::open_local(&path),
            Err(RevocationError::Io(_))
        ));

        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, b"not a database, certainly not one of ours").unwrap();
        assert!(matches!(
            Revocations::open_local(&garbage),
            Err(RevocationError::Io(_))
        ));
        assert!(matches!(
            Revocations::open_local(&dir.path().join("missing/dir/file")),
            Err(RevocationError::Io(_))
        ));
    }

    #[test]
    fn change_log_is_applied_only_when_complete() {
        let log = |entries: &[&str]| entries.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        let changes =
            parse_changes(&log(&["5|t|1700000300|a|b", "6|s+|0|x", "7|s-|0|x"]), 4, 7).unwrap();
        assert_eq!(
            changes,
            [
                Change::Token {
                    jti: "a|b".into(),
                    forget_after: 1_700_000_300
                },
                Change::Sandbox {
                    id: "x".into(),
                    revoked: true
                },
                Change::Sandbox {
                    id: "x".into(),
                    revoked: false
                },
            ]
        );
        // A trimmed start, a hole, a missing end, an unknown entry: reload instead.
        assert_eq!(parse_changes(&log(&["6|s+|0|x"]), 4, 6), None);
        assert_eq!(parse_changes(&log(&["5|s+|0|x", "7|s+|0|y"]), 4, 7), None);
        assert_eq!(parse_changes(&log(&["5|s+|0|x"]), 4, 6), None);
        assert_eq!(parse_changes(&log(&["5|zz|0|x"]), 4, 5), None);
        assert_eq!(parse_changes(&log(&["5|t|soon|x"]), 4, 5), None);
        assert_eq!(parse_changes(&[], 4, 4), Some(vec![]));
    }

    // -----------------------------------------------------------------------------------------
    // Redis: a real redis-server per test.

    /// `REDIS_SERVER_BIN`, else `redis-server` on PATH; `None` (the test skips) when neither,
    /// unless CI is set.
    fn redis_server_bin(test: &str) -> Option<PathBuf> {
        let found = std::env::var_os("REDIS_SERVER_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::split_paths(&std::env::var_os("PATH")?)
                    .map(|dir| dir.join("redis-server"))
                    .find(|candidate| candidate.is_file())
            });
        if found.is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server not found: scripts/install-debian redis-server redis-server must run first (or set REDIS_SERVER_BIN)"
            );
            eprintln!(
                "{test}: skipped, redis-server not found (run scripts/install-debian redis-server redis-server)"
            );
        }
        found
    }

    fn free_port() -> u16 {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    /// A redis-server on 127.0.0.1 without persistence, killed on drop.
    struct RedisServer {
        bin: PathBuf,
        port: u16,
        child: Option<Child>,
    }

    impl RedisServer {
        fn start(bin: PathBuf) -> Self {
            let mut server = RedisServer {
                bin,
                port: free_port(),
                child: None,
            };
            server.restart();
            server
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        /// Starts it (again, on the same port, empty) and waits until it answers PING.
        fn restart(&mut self) {
            self.kill();
            let mut child = Command::new(&self.bin)
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().expect("redis-server status") {
                    panic!("redis-server exited at start: {status}");
                }
                if self.answers_ping() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not answer PING"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            self.child = Some(child);
        }

        fn answers_ping(&self) -> bool {
            let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut answer = [0u8; 7];
            stream.write_all(b"PING\r\n").is_ok()
                && stream.read_exact(&mut answer).is_ok()
                && &answer == b"+PONG\r\n"
        }

        fn signal(&self, signal: &str) {
            let child = self.child.as_ref().expect("redis-server running");
            let status = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{signal} failed");
        }

        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        async fn raw(&self) -> redis::aio::MultiplexedConnection {
            redis::Client::open(self.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .expect("raw connection to the test redis-server")
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Polls `condition` every 10 ms for up to `limit`.
    async fn within(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if condition() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    const PREFIX: &str = "daytona-authz:";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_replicas_agree_within_a_second() {
        let Some(bin) = redis_server_bin("redis_replicas_agree_within_a_second") else {
            return;
        };
        let server = RedisServer::start(bin);
        let a = Revocations::connect_redis(&server.url(), PREFIX, Counter::default())
            .await
            .unwrap();
        let b = Revocations::connect_redis(&server.url(), PREFIX, Counter::default())
            .await
            .unwrap();
        assert_eq!(a.backend(), "redis");
        let now = unix_now();
        let second = Duration::from_secs(1);

        a.revoke_token("jti-1", Some(now + 600)).await.unwrap();
        // At once on the replica that wrote it.
        assert_eq!(a.check(Some("jti-1"), SANDBOX, now), TOKEN_REVOKED);
        assert!(
            within(second, || b.check(Some("jti-1"), SANDBOX, now)
                == TOKEN_REVOKED)
            .await,
            "the other replica did not see the token revocation within a second"
        );
        assert_eq!(
            b.check(Some("jti-1"), SANDBOX, now + 600 + EXPIRY_GRACE_SECS + 1),
            ACTIVE
        );

        b.revoke_sandbox(SANDBOX).await.unwrap();
        assert!(
            within(second, || a.check(None, SANDBOX, now) == SANDBOX_REVOKED).await,
            "the other replica did not see the sandbox revocation within a second"
        );
        assert_eq!(a.check(Some("jti-2"), OTHER_SANDBOX, now), ACTIVE);

        a.unrevoke_sandbox(SANDBOX).await.unwrap();
        assert!(
            within(second, || b.check(None, SANDBOX, now) == ACTIVE).await,
            "the other replica did not see the sandbox lifted within a second"
        );
        assert_eq!(b.check(Some("jti-1"), SANDBOX, now), TOKEN_REVOKED);

        // A replica started later loads what is already there.
        let c = Revocations::connect_redis(&server.url(), PREFIX, Counter::default())
            .await
            .unwrap();
        assert_eq!(c.check(Some("jti-1"), SANDBOX, now), TOKEN_REVOKED);
        assert_eq!(c.check(None, SANDBOX, now), ACTIVE);

        assert!(matches!(
            a.revoke_sandbox("NOT-A-UUID").await,
            Err(RevocationError::Invalid(_))
        ));

        // Subjects travel the same way, and a later replica loads them.
        a.revoke_subject("alice|x").await.unwrap();
        let subject_revoked = Ok(Status::Revoked(RevokedBy::Subject));
        assert!(
            within(second, || b.check_token(
                None,
                SANDBOX,
                Some("alice|x"),
                now
            ) == subject_revoked)
            .await,
            "the other replica did not see the subject revocation within a second"
        );
        let d = Revocations::connect_redis(&server.url(), PREFIX, Counter::default())
            .await
            .unwrap();
        assert_eq!(
            d.check_token(None, OTHER_SANDBOX, Some("alice|x"), now),
            subject_revoked
        );
        b.unrevoke_subject("alice|x").await.unwrap();
        assert!(
            within(second, || a.check_token(
                None,
                SANDBOX,
                Some("alice|x"),
                now
            ) == ACTIVE)
            .await,
            "the other replica did not see the subject lifted within a second"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_fails_closed_and_recovers() {
        let Some(bin) = redis_server_bin("redis_down_fails_closed_and_recovers") else {
            return;
        };
        let mut server = RedisServer::start(bin);
        let store = Revocations::connect_redis(&server.url(), PREFIX, Counter::default())
            .await
            .unwrap();
        let now = unix_now();
        store.revoke_token("jti-1", Some(now + 600)).await.unwrap();
        assert_eq!(store.check(Some("jti-1"), SANDBOX, now), TOKEN_REVOKED);

        // Hung (a partition looks the same): unknown, then back when it answers again.
        server.signal("STOP");
        assert!(
            within(Duration::from_millis(1500), || {
                store.check(Some("jti-2"), SANDBOX, now) == Err(RevocationError::Unknown)
            })
            .await,
            "check still answered 1.5 s after Redis hung"
        );
        server.signal("CONT");
        assert!(
            within(Duration::from_secs(5), || store
                .check(Some("jti-1"), SANDBOX, now)
                .is_ok())
            .await,
            "check did not recover after Redis answered again"
        );
        assert_eq!(store.check(Some("jti-1"), SANDBOX, now), TOKEN_REVOKED);

        // Gone.
        server.kill();
        assert!(
            within(Duration::from_millis(1500), || {
                store.check(Some("jti-2"), SANDBOX, now) == Err(RevocationError::Unknown)
            })
            .await,
            "check still answered 1.5 s after Redis went away"
        );
        assert!(matches!(
            store.revoke_sandbox(SANDBOX).await,
            Err(RevocationError::Redis(_))
        ));

        // Back on the same port, empty (no persistence): the replica does not take the empty
        // Redis for the truth. Its mirror keeps the revocation (never Active), writes it back,
        // and checks resume.
        assert_eq!(store.restores(), 0);
        server.restart();
        assert!(
            within(Duration::from_secs(10), || {
                let status = store.check(Some("jti-1"), SANDBOX, now);
                assert_ne!(status, ACTIVE, "a revocation Redis lost was forgotten");
                status.is_ok()
            })
            .await,
            "check did not recover after Redis came back"
        );
        assert_eq!(store.check(Some("jti-1"), SANDBOX, now), TOKEN_REVOKED);
        assert_eq!(store.restores(), 1);
        let mut raw = server.raw().await;
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(format!("{PREFIX}revoked-jtis"))
            .arg("jti-1")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(
            score.map(score_to_secs),
            Some(now + 600 + EXPIRY_GRACE_SECS)
        );
        let epoch: Option<String> = redis::cmd("GET")
            .arg(format!("{PREFIX}epoch"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(epoch.is_some());
        // A replica started now finds it in Redis.
        let fresh = Revocations::connect_redis(&server.url(), PREFIX, Counter::default())
            .await
            .unwrap();
        assert_eq!(fresh.check(Some("jti-1"), SANDBOX, now), TOKEN_REVOKED);
        store.revoke_sandbox(SANDBOX).await.unwrap();
        assert_eq!(store.check(None, SANDBOX, now), SANDBOX_REVOKED);
        assert!(
            within(Duration::from_secs(1), || fresh.check(None, SANDBOX, now)
                == SANDBOX_REVOKED)
            .await
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_mirror_reloads_when_the_change_log_has_a_gap() {
        let Some(bin) = redis_server_bin("redis_mirror_reloads_when_the_change_log_has_a_gap")
        else {
            return;
        };
        let server = RedisServer::start(bin);
        let store = Revocations::connect_redis(&server.url(), "test:", Counter::default())
            .await
            .unwrap();
        let now = unix_now();
        store.revoke_token("jti-1", Some(now + 600)).await.unwrap();

        let mut raw = server.raw().await;
        let score: f64 = redis::cmd("ZSCORE")
            .arg("test:revoked-jtis")
            .arg("jti-1")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(score_to_secs(score), now + 600 + EXPIRY_GRACE_SECS);

        // A change the log no longer holds (as if trimmed): only a full load can see it.
        redis::pipe()
            .cmd("SADD")
            .arg("test:revoked-sandboxes")
            .arg(SANDBOX)
            .ignore()
            .cmd("INCR")
            .arg("test:seq")
            .ignore()
            .query_async::<()>(&mut raw)
            .await
            .unwrap();
        assert!(
            within(Duration::from_secs(1), || store.check(None, SANDBOX, now)
                == SANDBOX_REVOKED)
            .await,
            "a change missing from the log was not picked up by a full load"
        );
        assert_eq!(
            store.check(Some("jti-1"), OTHER_SANDBOX, now),
            TOKEN_REVOKED
        );

        // Data lost under us (FLUSHALL): the mirror keeps every revocation and writes them
        // back, with the same expiry.
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut raw)
            .await
            .unwrap();
        let restored = async || {
            let tokens: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg("test:revoked-jtis")
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut server.raw().await)
                .await
                .unwrap();
            let sandboxes: Vec<String> = redis::cmd("SMEMBERS")
                .arg("test:revoked-sandboxes")
                .query_async(&mut server.raw().await)
                .await
                .unwrap();
            (tokens, sandboxes)
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            assert_eq!(store.check(None, SANDBOX, now), SANDBOX_REVOKED);
            assert_eq!(
                store.check(Some("jti-1"), OTHER_SANDBOX, now),
                TOKEN_REVOKED
            );
            if !restored().await.1.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the revocations were not written back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (tokens, sandboxes) = restored().await;
        assert_eq!(
            tokens,
            [("jti-1".to_owned(), (now + 600 + EXPIRY_GRACE_SECS) as f64)]
        );
        assert_eq!(sandboxes, [SANDBOX]);
        assert_eq!(store.restores(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_rolled_back_is_restored_by_every_replica() {
        let Some(bin) = redis_server_bin("redis_rolled_back_is_restored_by_every_replica") else {
            return;
        };
        let server = RedisServer::start(bin);
        let a = Revocations::connect_redis(&server.url(), PREFIX, Counter::default())
            .await
            .unwrap();
        let b = Revocations::connect_redis(&server.url(), PREFIX, Counter::default())
            .await
            .unwrap();
        let now = unix_now();
        a.revoke_token("unbounded", None).await.unwrap();
        a.revoke_sandbox(SANDBOX).await.unwrap();
        assert!(
            within(Duration::from_secs(1), || b.check(None, SANDBOX, now)
                == SANDBOX_REVOKED)
            .await
        );
        let mut raw = server.raw().await;
        let score: f64 = redis::cmd("ZSCORE")
            .arg(format!("{PREFIX}revoked-jtis"))
            .arg("unbounded")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(score_to_secs(score), KEEP_FOREVER);

        // A failover to a replica that had not caught up: the same epoch, older data and an
        // older change counter.
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(format!("{PREFIX}revoked-jtis"))
            .arg(format!("{PREFIX}revoked-sandboxes"))
            .arg(format!("{PREFIX}changes"))
            .ignore()
            .cmd("SET")
            .arg(format!("{PREFIX}seq"))
            .arg(0)
            .ignore()
            .query_async::<()>(&mut raw)
            .await
            .unwrap();
        assert!(
            // Each once: whichever notices second finds the epoch already replaced.
            within(Duration::from_secs(2), || a.restores() == 1
                && b.restores() == 1)
            .await,
            "restores: a {}, b {}",
            a.restores(),
            b.restores()
        );
        for replica in [&a, &b] {
            assert_eq!(replica.check(None, SANDBOX, now), SANDBOX_REVOKED);
            assert_eq!(
                replica.check(Some("unbounded"), OTHER_SANDBOX, KEEP_FOREVER - 1),
                TOKEN_REVOKED
            );
        }
        let c = Revocations::connect_redis(&server.url(), PREFIX, Counter::default())
            .await
            .unwrap();
        assert_eq!(c.check(None, SANDBOX, now), SANDBOX_REVOKED);
        assert_eq!(
            c.check(Some("unbounded"), OTHER_SANDBOX, now),
            TOKEN_REVOKED
        );
        // And they keep agreeing afterwards.
        b.unrevoke_sandbox(SANDBOX).await.unwrap();
        for replica in [&a, &c] {
            assert!(
                within(Duration::from_secs(1), || replica.check(None, SANDBOX, now)
                    == ACTIVE)
                .await
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_refuses_entries_beyond_its_limits() {
        let Some(bin) = redis_server_bin("redis_store_refuses_entries_beyond_its_limits") else {
            return;
        };
        let server = RedisServer::start(bin);
        let mut store = Revocations::connect_redis(&server.url(), PREFIX, Counter::default())
            .await
            .unwrap();
        store.limits = Limits {
            tokens: 1,
            sandboxes: 1,
        };
        let now = unix_now();
        store.revoke_token("jti-1", Some(now + 600)).await.unwrap();
        assert!(matches!(
            store.revoke_token("jti-2", Some(now + 600)).await,
            Err(RevocationError::Invalid(_))
        ));
        store.revoke_token("jti-1", Some(now + 900)).await.unwrap();
        store.revoke_sandbox(SANDBOX).await.unwrap();
        assert!(matches!(
            store.revoke_sandbox(OTHER_SANDBOX).await,
            Err(RevocationError::Invalid(_))
        ));
        assert_eq!(store.check(Some("jti-2"), OTHER_SANDBOX, now), ACTIVE);
    }

    #[tokio::test]
    async fn redis_connect_fails_fast_without_redis() {
        let url = format!("redis://127.0.0.1:{}/", free_port());
        let started = Instant::now();
        assert!(matches!(
            Revocations::connect_redis(&url, PREFIX, Counter::default()).await,
            Err(RevocationError::Redis(_))
        ));
        assert!(started.elapsed() <= WRITE_TIMEOUT + Duration::from_secs(1));

        let bad_url = Revocations::connect_redis(
            "http://user:hunter2@example.com",
            PREFIX,
            Counter::default(),
        )
        .await;
        assert!(
            matches!(&bad_url, Err(RevocationError::Invalid(m)) if !m.contains("hunter2")),
            "{bad_url:?}"
        );
        for prefix in ["", "has space:", "tab\t:"] {
            assert!(matches!(
                Revocations::connect_redis(&url, prefix, Counter::default()).await,
                Err(RevocationError::Invalid(_))
            ));
        }
    }
}
