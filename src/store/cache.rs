//! The in-memory cache of documents, bounded by their estimated size.
//!
//! Every entry is shared (`Arc<Mutex<T>>`): a caller works on a document under
//! its lock without holding the cache's lock. An entry somebody still holds
//! (a request in flight, a write queued for the group commit) is never
//! evicted, so the cache can exceed its budget by what is in use. Otherwise,
//! once the entries' accounted bytes exceed the budget, the least recently
//! used go until they fit again, with some room to spare so that eviction
//! passes stay rare.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::record::DocKey;

/// What a cached value says it costs; it may change while the value is in
/// the cache, and every change goes through [`DocCache::reaccount`].
pub trait Accounted {
    fn accounted_bytes(&self) -> usize;
}

pub type Shared<T> = Arc<Mutex<T>>;

/// What the cache holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    pub documents: usize,
    pub bytes: usize,
    pub budget: usize,
}

pub struct DocCache<T> {
    budget: usize,
    entries: Mutex<Entries<T>>,
    /// The sum of the entries' [`Accounted::accounted_bytes`]. A holder of an
    /// entry's lock updates it without the cache's lock.
    bytes: AtomicUsize,
}

struct Entries<T> {
    map: HashMap<DocKey, Entry<T>>,
    /// Ticks on every lookup; orders entries by their last use.
    clock: u64,
}

struct Entry<T> {
    value: Shared<T>,
    last_used: u64,
}

impl<T: Accounted> DocCache<T> {
    pub fn new(budget: usize) -> Self {
        Self { budget, entries: Mutex::new(Entries { map: HashMap::new(), clock: 0 }), bytes: AtomicUsize::new(0) }
    }

    /// The cached value of `key`, if any.
    pub fn get(&self, key: &DocKey) -> Option<Shared<T>> {
        let mut entries = self.lock();
        entries.touch(key)
    }

    /// The cached value of `key`, else the one `load` makes, which is cached.
    /// `load` runs under the cache's lock: no other caller can load the same
    /// key meanwhile.
    pub fn get_or_load<E>(&self, key: &DocKey, load: impl FnOnce() -> Result<T, E>) -> Result<Shared<T>, E> {
        let mut entries = self.lock();
        if let Some(value) = entries.touch(key) {
            self.evict_if_over(&mut entries);
            return Ok(value);
        }
        let value = load()?;
        self.bytes.fetch_add(value.accounted_bytes(), Ordering::Relaxed);
        let value = Arc::new(Mutex::new(value));
        let last_used = entries.clock;
        entries.map.insert(key.clone(), Entry { value: Arc::clone(&value), last_used });
        self.evict_if_over(&mut entries);
        Ok(value)
    }

    /// Records that a cached value's cost went from `before` to `after`;
    /// called while holding the value's lock, so that eviction, which takes
    /// that lock, sees the cost that was added.
    pub fn reaccount(&self, before: usize, after: usize) {
        if after > before {
            self.bytes.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    pub fn usage(&self) -> CacheUsage {
        let documents = self.lock().map.len();
        CacheUsage { documents, bytes: self.bytes.load(Ordering::Relaxed), budget: self.budget }
    }

    fn lock(&self) -> MutexGuard<'_, Entries<T>> {
        self.entries.lock().expect("cache lock")
    }

    fn evict_if_over(&self, entries: &mut Entries<T>) {
        if self.bytes.load(Ordering::Relaxed) <= self.budget {
            return;
        }
        let target = self.budget - self.budget / 8;
        // Only the cache holds these: nobody else can lock them, or look
        // them up while the cache's lock is held.
        let mut idle: Vec<(u64, &DocKey)> = entries
            .map
            .iter()
            .filter(|(_, entry)| Arc::strong_count(&entry.value) == 1)
            .map(|(key, entry)| (entry.last_used, key))
            .collect();
        idle.sort_unstable();
        let mut evict = Vec::new();
        let mut bytes = self.bytes.load(Ordering::Relaxed);
        for (_, key) in idle {
            if bytes <= target {
                break;
            }
            let cost = entries.map[key].value.lock().expect("document lock").accounted_bytes();
            bytes = bytes.saturating_sub(cost);
            evict.push((key.clone(), cost));
        }
        for (key, cost) in evict {
            entries.map.remove(&key);
            self.bytes.fetch_sub(cost, Ordering::Relaxed);
        }
    }
}

impl<T> Entries<T> {
    fn touch(&mut self, key: &DocKey) -> Option<Shared<T>> {
        self.clock += 1;
        let entry = self.map.get_mut(key)?;
        entry.last_used = self.clock;
        Some(Arc::clone(&entry.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sized(usize);

    impl Accounted for Sized {
        fn accounted_bytes(&self) -> usize {
            self.0
        }
    }

    fn key(n: usize) -> DocKey {
        DocKey::new("c", n.to_string())
    }

    fn load(cache: &DocCache<Sized>, n: usize, bytes: usize) -> Shared<Sized> {
        cache.get_or_load(&key(n), || Ok::<_, ()>(Sized(bytes))).unwrap()
    }

    #[test]
    fn the_least_recently_used_go_first() {
        let cache = DocCache::new(1000);
        for n in 0..10 {
            load(&cache, n, 100);
        }
        assert_eq!(cache.usage(), CacheUsage { documents: 10, bytes: 1000, budget: 1000 });
        // Used again, so 0 is now more recent than 1 and 2.
        assert!(cache.get(&key(0)).is_some());
        load(&cache, 10, 100);
        // Over budget: evicted down to 7/8 of it, oldest first.
        let usage = cache.usage();
        assert_eq!((usage.documents, usage.bytes), (8, 800));
        assert!(cache.get(&key(0)).is_some());
        assert!((1..=3).all(|n| cache.get(&key(n)).is_none()));
        assert!((4..=10).all(|n| cache.get(&key(n)).is_some()));
    }

    #[test]
    fn entries_in_use_stay_and_growth_counts() {
        let cache = DocCache::new(1000);
        let held = load(&cache, 0, 900);
        {
            let mut value = held.lock().unwrap();
            cache.reaccount(value.0, 1500);
            value.0 = 1500;
        }
        // Over budget, but the held entry stays, and so does the newcomer.
        load(&cache, 1, 100);
        let usage = cache.usage();
        assert_eq!((usage.documents, usage.bytes), (2, 1600));
        drop(held);
        // Once released, the oversized entry is the first to go.
        load(&cache, 2, 100);
        let usage = cache.usage();
        assert_eq!((usage.documents, usage.bytes), (2, 200));
        assert!(cache.get(&key(0)).is_none());
    }

    #[test]
    fn a_failed_load_caches_nothing() {
        let cache: DocCache<Sized> = DocCache::new(1000);
        assert_eq!(cache.get_or_load(&key(0), || Err("unreadable")).err(), Some("unreadable"));
        assert_eq!(cache.usage().documents, 0);
    }
}
