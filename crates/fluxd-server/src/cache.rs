//! Small in-process read caches in front of the store, so that the hot API paths (every request's
//! key check, `get_result` polling, submit's fine-tune lookup) do not each wait on an SQLite read
//! connection: with sqlx every read is a hand-off to the connection's own thread and back, and on a
//! small machine those context switches, not SQLite, were most of the server's CPU.
//!
//! What each cache may serve stale, and for how long:
//! - [`AuthCache`]: a key revoked or re-limited by another process (`fluxd keys revoke`) is still
//!   accepted with its old limits for up to `--auth-cache-ttl` (default 5 s). Unknown keys are not
//!   cached, so garbage keys cannot fill it, and a new key works at once.
//! - [`TaskCache`]: finished tasks never change and are kept until their retention ends (checked
//!   against `finished_at` on every hit). Pending ones are kept `--task-cache-ttl` (default
//!   200 ms) and dropped by this process's worker whenever it claims, progresses or finishes the
//!   task, so one process never answers an older status than it wrote. A worker in another
//!   process is seen up to the TTL late.
//! - [`FinetuneCache`]: fine-tunes found by submit are kept `--finetune-cache-ttl` (default 5 s);
//!   this process's import and delete clear it; another process's are seen up to the TTL late.
//!
//! Every cache is bounded; a TTL of zero turns it off. Nothing invalidates across processes: with
//! API nodes and workers apart, each bound above holds per node (the README states them). No
//! entry answers another tenant: keys by their own hash, tasks by id with their owner checked on
//! every hit, fine-tunes by the requesting tenant.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use fluxd_store::{FinetuneRecord, KeyInfo, TaskState};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Shards of each cache: concurrent requests rarely wait on one another's lock.
const SHARDS: usize = 16;

/// Default TTL of authenticated keys.
pub const DEFAULT_AUTH_CACHE_TTL: Duration = Duration::from_secs(5);
/// Default TTL of unfinished tasks in the `get_result` cache.
pub const DEFAULT_TASK_CACHE_TTL: Duration = Duration::from_millis(200);
/// Default TTL of fine-tunes found by submit.
pub const DEFAULT_FINETUNE_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most keys in the authentication cache.
pub const AUTH_CACHE_CAPACITY: usize = 16_384;
/// Most tasks in the `get_result` cache.
pub const TASK_CACHE_CAPACITY: usize = 65_536;
/// Most fine-tune lookups in the fine-tune cache.
pub const FINETUNE_CACHE_CAPACITY: usize = 4_096;

struct Entry<V> {
    value: V,
    /// None: kept until evicted or invalidated.
    expires: Option<Instant>,
}

/// One shard of a [`TtlCache`].
type Shard<K, V> = Mutex<HashMap<K, Entry<V>>>;

/// A bounded map whose entries expire: sharded mutexes around `HashMap`s. When a shard is full,
/// expired entries go first, then an arbitrary one (the hash order), which is enough for caches
/// whose misses cost one database read.
pub struct TtlCache<K, V> {
    shards: Box<[Shard<K, V>]>,
    per_shard: usize,
    hasher: RandomState,
    /// Bumped by every invalidation, so that a read started before one cannot cache what it read
    /// after it (see [`TtlCache::insert_unless_invalidated`]).
    generation: AtomicU64,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// A cache of at most about `capacity` entries (at least one per shard).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            generation: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, HashMap<K, Entry<V>>> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A panic while holding the lock cannot leave a map half-updated in a way that matters
        // to a cache.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The value under `key` if it has not expired at `now`.
    pub fn get_at(&self, key: &K, now: Instant) -> Option<V> {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(entry) if entry.expires.is_none_or(|at| now < at) => Some(entry.value.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    /// The value under `key` if it has not expired.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    /// The current invalidation count; pass it to [`TtlCache::insert_unless_invalidated`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Stores `value` until `expires` (None: until evicted).
    pub fn insert(&self, key: K, value: V, expires: Option<Instant>) {
        let mut shard = self.shard(&key);
        self.insert_locked(&mut shard, key, value, expires);
    }

    /// Stores `value` unless an invalidation happened since `generation` was read: the value was
    /// read from the store before that invalidation's write may have been visible.
    pub fn insert_unless_invalidated(
        &self,
        generation: u64,
        key: K,
        value: V,
        expires: Option<Instant>,
    ) {
        let mut shard = self.shard(&key);
        // Invalidations bump the generation while holding the key's shard lock, so under that
        // same lock this comparison sees any invalidation of this key that came first.
        if self.generation.load(Ordering::Acquire) == generation {
            self.insert_locked(&mut shard, key, value, expires);
        }
    }

    fn insert_locked(
        &self,
        shard: &mut HashMap<K, Entry<V>>,
        key: K,
        value: V,
        expires: Option<Instant>,
    ) {
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            let now = Instant::now();
            shard.retain(|_, e| e.expires.is_none_or(|at| now < at));
            if shard.len() >= self.per_shard {
                let victim = shard.keys().next().map(|k| self.hasher.hash_one(k));
                if let Some(victim) = victim {
                    shard.retain(|k, _| self.hasher.hash_one(k) != victim);
                }
            }
        }
        shard.insert(key, Entry { value, expires });
    }

    /// Drops `key`.
    pub fn remove(&self, key: &K) {
        let mut shard = self.shard(key);
        shard.remove(key);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops everything.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.clear();
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Entries held now, expired ones included.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Authenticated keys by the SHA-256 of the presented key (the plaintext is never kept).
pub struct AuthCache {
    ttl: Duration,
    map: TtlCache<[u8; 32], KeyInfo>,
}

impl AuthCache {
    /// A cache keeping keys for `ttl` (zero: off).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: TtlCache::new(AUTH_CACHE_CAPACITY),
        }
    }

    /// Whether the cache is on.
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn digest(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }

    /// The key's record if it was authenticated less than the TTL ago.
    pub fn get(&self, key: &str) -> Option<KeyInfo> {
        if !self.enabled() {
            return None;
        }
        self.map.get(&Self::digest(key))
    }

    /// Remembers a successful authentication.
    pub fn insert(&self, key: &str, info: KeyInfo) {
        if self.enabled() {
            self.map
                .insert(Self::digest(key), info, Some(Instant::now() + self.ttl));
        }
    }

    /// Forgets every key (a key was revoked or re-limited in this process).
    pub fn clear(&self) {
        self.map.clear();
    }
}

/// What `get_result` needs of a task, kept with the tenant it belongs to.
#[derive(Debug, Clone)]
pub struct CachedTask {
    /// Owning tenant: another tenant's lookup of the same id is a miss.
    pub tenant: String,
    /// Status and its data.
    pub state: TaskState,
    /// When the task finished; its retention counts from here.
    pub finished_at: Option<SystemTime>,
}

/// `get_result` answers by task id. Entries are keyed by the id and carry their tenant, so that the
/// worker can invalidate by id alone while a lookup by another tenant still misses.
pub struct TaskCache {
    pending_ttl: Duration,
    retention: Duration,
    map: TtlCache<Uuid, CachedTask>,
}

impl TaskCache {
    /// A cache keeping unfinished tasks for `pending_ttl` (zero: the cache is off) and finished
    /// ones until `retention` after they finished.
    pub fn new(pending_ttl: Duration, retention: Duration) -> Self {
        Self {
            pending_ttl,
            retention,
            map: TtlCache::new(TASK_CACHE_CAPACITY),
        }
    }

    /// Whether the cache is on.
    pub fn enabled(&self) -> bool {
        !self.pending_ttl.is_zero()
    }

    /// The tenant's task if cached, its retention not over at `now`; None is a miss, not an
    /// absent task.
    pub fn get(&self, tenant: &str, id: Uuid, now: SystemTime) -> Option<TaskState> {
        if !self.enabled() {
            return None;
        }
        let task = self.map.get(&id)?;
        if task.tenant != tenant {
            return None;
        }
        if let Some(finished) = task.finished_at {
            let age = now.duration_since(finished).unwrap_or_default();
            if age >= self.retention {
                // Expired (or about to be, at the janitor's next sweep): read the store again.
                self.map.remove(&id);
                return None;
            }
        }
        Some(task.state)
    }

    /// Call before reading the task from the store, and hand the answer to
    /// [`TaskCache::insert`].
    pub fn generation(&self) -> u64 {
        self.map.generation()
    }

    /// Remembers a task read from the store after [`TaskCache::generation`] returned
    /// `generation`; skipped if this process changed a task meanwhile.
    pub fn insert(&self, generation: u64, id: Uuid, task: CachedTask) {
        if !self.enabled() {
            return;
        }
        let expires = match task.state {
            TaskState::Pending { .. } => Some(Instant::now() + self.pending_ttl),
            // Final states never change; the retention check on reading ends them.
            _ => None,
        };
        self.map
            .insert_unless_invalidated(generation, id, task, expires);
    }

    /// Forgets a task this process just changed.
    pub fn invalidate(&self, id: Uuid) {
        self.map.remove(&id);
    }
}

/// Fine-tunes found by submit, by (requesting tenant, `finetune_id`).
pub struct FinetuneCache {
    ttl: Duration,
    map: TtlCache<(String, String), FinetuneRecord>,
}

impl FinetuneCache {
    /// A cache keeping found fine-tunes for `ttl` (zero: off).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: TtlCache::new(FINETUNE_CACHE_CAPACITY),
        }
    }

    /// The fine-tune `finetune_id` as `requester` resolved it less than the TTL ago.
    pub fn get(&self, requester: &str, finetune_id: &str) -> Option<FinetuneRecord> {
        if self.ttl.is_zero() {
            return None;
        }
        self.map
            .get(&(requester.to_owned(), finetune_id.to_owned()))
    }

    /// Call before reading from the store; hand the answer to [`FinetuneCache::insert`].
    pub fn generation(&self) -> u64 {
        self.map.generation()
    }

    /// Remembers a found fine-tune (absent ones are not remembered: an import makes them exist
    /// at once).
    pub fn insert(&self, generation: u64, requester: &str, finetune_id: &str, r: FinetuneRecord) {
        if self.ttl.is_zero() {
            return;
        }
        self.map.insert_unless_invalidated(
            generation,
            (requester.to_owned(), finetune_id.to_owned()),
            r,
            Some(Instant::now() + self.ttl),
        );
    }

    /// Forgets everything: a fine-tune was imported or deleted here (a shared one may be cached
    /// under any requester, so there is no single entry to drop).
    pub fn clear(&self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxd_store::ReadyRecord;

    fn key_info(tenant: &str) -> KeyInfo {
        KeyInfo {
            key_id: Uuid::new_v4(),
            tenant: tenant.into(),
            max_active_tasks: 7,
        }
    }

    fn ready() -> TaskState {
        TaskState::Ready(ReadyRecord {
            sample_key: "samples/x.jpeg".into(),
            prompt_used: "p".into(),
            seed_used: 1,
            start_time: 1.0,
            end_time: 2.0,
        })
    }

    fn cached(tenant: &str, state: TaskState, finished_at: Option<SystemTime>) -> CachedTask {
        CachedTask {
            tenant: tenant.into(),
            state,
            finished_at,
        }
    }

    #[test]
    fn entries_expire() {
        // Room for two entries per shard, so the two keys never evict each other whichever
        // shards they hash to.
        let cache: TtlCache<u32, u32> = TtlCache::new(2 * SHARDS);
        let now = Instant::now();
        cache.insert(1, 10, Some(now + Duration::from_secs(1)));
        cache.insert(2, 20, None);
        assert_eq!(cache.get_at(&1, now), Some(10));
        assert_eq!(cache.get_at(&1, now + Duration::from_secs(1)), None);
        assert_eq!(cache.get_at(&1, now), None, "an expired entry is dropped");
        assert_eq!(cache.get_at(&2, now + Duration::from_secs(3600)), Some(20));
    }

    #[test]
    fn size_is_bounded() {
        let cache: TtlCache<u32, u32> = TtlCache::new(64);
        for i in 0..10_000 {
            cache.insert(i, i, None);
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn a_read_from_before_an_invalidation_is_not_cached() {
        let cache: TtlCache<u32, u32> = TtlCache::new(10);
        let before = cache.generation();
        cache.remove(&1);
        cache.insert_unless_invalidated(before, 1, 10, None);
        assert_eq!(cache.get(&1), None);
        cache.insert_unless_invalidated(cache.generation(), 1, 11, None);
        assert_eq!(cache.get(&1), Some(11));
    }

    #[test]
    fn auth_cache_hits_by_key_and_can_be_off() {
        let cache = AuthCache::new(Duration::from_secs(5));
        assert!(cache.get("k1").is_none());
        let info = key_info("a");
        cache.insert("k1", info.clone());
        assert_eq!(cache.get("k1").map(|i| i.key_id), Some(info.key_id));
        assert!(cache.get("k2").is_none());
        cache.clear();
        assert!(cache.get("k1").is_none());

        let off = AuthCache::new(Duration::ZERO);
        off.insert("k1", info);
        assert!(off.get("k1").is_none());
        assert!(off.map.is_empty());
    }

    #[test]
    fn auth_cache_entries_expire() {
        let cache = AuthCache::new(Duration::from_millis(1));
        cache.insert("k1", key_info("a"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.get("k1").is_none());
    }

    #[test]
    fn tasks_are_isolated_between_tenants() {
        let cache = TaskCache::new(Duration::from_secs(60), Duration::from_secs(3600));
        let id = Uuid::new_v4();
        let now = SystemTime::now();
        cache.insert(cache.generation(), id, cached("a", ready(), Some(now)));
        assert!(matches!(cache.get("a", id, now), Some(TaskState::Ready(_))));
        assert!(cache.get("b", id, now).is_none());
    }

    #[test]
    fn pending_tasks_expire_and_finished_ones_stay_until_retention() {
        let retention = Duration::from_secs(3600);
        let cache = TaskCache::new(Duration::from_millis(1), retention);
        let (pending, done) = (Uuid::new_v4(), Uuid::new_v4());
        let now = SystemTime::now();
        let g = cache.generation();
        cache.insert(
            g,
            pending,
            cached(
                "a",
                TaskState::Pending {
                    progress: None,
                    preview: None,
                },
                None,
            ),
        );
        cache.insert(g, done, cached("a", ready(), Some(now)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.get("a", pending, now).is_none());
        assert!(cache.get("a", done, now + retention / 2).is_some());
        assert!(
            cache.get("a", done, now + retention).is_none(),
            "past its retention a task is read from the store again"
        );
        assert!(cache.get("a", done, now).is_none(), "and dropped");
    }

    #[test]
    fn worker_invalidation_drops_the_task_and_stale_reads() {
        let cache = TaskCache::new(Duration::from_secs(60), Duration::from_secs(3600));
        let id = Uuid::new_v4();
        let now = SystemTime::now();
        let pending = || {
            cached(
                "a",
                TaskState::Pending {
                    progress: Some(0.5),
                    preview: None,
                },
                None,
            )
        };
        cache.insert(cache.generation(), id, pending());
        assert!(cache.get("a", id, now).is_some());
        // A get_result read the pending row, then the worker finished the task.
        let before = cache.generation();
        cache.invalidate(id);
        cache.insert(before, id, pending());
        assert!(
            cache.get("a", id, now).is_none(),
            "no stale Pending after Ready"
        );
    }

    #[test]
    fn task_cache_off_at_zero() {
        let cache = TaskCache::new(Duration::ZERO, Duration::from_secs(3600));
        let id = Uuid::new_v4();
        cache.insert(0, id, cached("a", ready(), Some(SystemTime::now())));
        assert!(cache.get("a", id, SystemTime::now()).is_none());
    }

    #[test]
    fn finetunes_by_requester_and_cleared() {
        let cache = FinetuneCache::new(Duration::from_secs(5));
        cache.insert(cache.generation(), "a", "lora", cache_record());
        assert!(cache.get("a", "lora").is_some());
        assert!(cache.get("b", "lora").is_none());
        let before = cache.generation();
        cache.clear();
        assert!(cache.get("a", "lora").is_none());
        cache.insert(before, "a", "lora", cache_record());
        assert!(
            cache.get("a", "lora").is_none(),
            "a read from before a delete"
        );
    }

    fn cache_record() -> FinetuneRecord {
        FinetuneRecord {
            tenant: "a".into(),
            id: "lora".into(),
            format: "kohya".into(),
            rank: 4,
            alpha: None,
            base_hidden: None,
            trigger_word: None,
            comment: None,
            blob_key: "loras/x".into(),
            size_bytes: 1,
            sha256: "00".into(),
            created_at: SystemTime::UNIX_EPOCH,
            shared: false,
        }
    }
}
