//! Group commit: the store's single writer thread.
//!
//! Writers queue their prepared writes and wait for a ticket. The writer
//! thread takes everything queued so far, hands it to the store to apply
//! (each write atomically), flushes once, and then releases every ticket the
//! group covered, so concurrent requests share one disk round trip.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

struct Queue<W> {
    /// Tickets handed out; the writes (if any) behind them wait in `writes`.
    issued: u64,
    writes: Vec<W>,
    shutdown: bool,
}

pub struct GroupCommit<W> {
    queue: Arc<(Mutex<Queue<W>>, Condvar)>,
    flushed: watch::Receiver<u64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<W: Send + 'static> GroupCommit<W> {
    /// Starts the writer thread. `apply` receives each group of writes in
    /// queue order and must not return before they are in `db` (it retries
    /// on its own: a write that was queued cannot be taken back).
    pub fn start(db: sled::Db, apply: impl FnMut(Vec<W>) + Send + 'static) -> Self {
        let queue = Arc::new((Mutex::new(Queue { issued: 0, writes: Vec::new(), shutdown: false }), Condvar::new()));
        let (flushed_tx, flushed) = watch::channel(0u64);
        let worker_queue = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(&db, &worker_queue, apply, &flushed_tx))
            .expect("spawning the store writer thread");
        Self { queue, flushed, thread: Some(thread) }
    }

    /// Queues the write `build` returns. `build` runs under the queue lock,
    /// so writes are applied in exactly the order they were built (the store
    /// numbers its change log there).
    pub fn submit(&self, build: impl FnOnce() -> W) {
        let (lock, cvar) = &*self.queue;
        let mut queue = lock.lock().expect("write queue lock");
        let write = build();
        queue.writes.push(write);
        queue.issued += 1;
        cvar.notify_one();
    }

    /// Waits until everything submitted (or written to sled directly) before
    /// this call is applied and on disk.
    pub async fn durable(&self) -> Result<(), NotDurable> {
        let ticket = {
            let (lock, cvar) = &*self.queue;
            let mut queue = lock.lock().expect("write queue lock");
            queue.issued += 1;
            cvar.notify_one();
            queue.issued
        };
        let mut flushed = self.flushed.clone();
        match tokio::time::timeout(Duration::from_secs(30), flushed.wait_for(|done| *done >= ticket)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(NotDurable),
        }
    }
}

impl<W> Drop for GroupCommit<W> {
    fn drop(&mut self) {
        {
            let (lock, cvar) = &*self.queue;
            lock.lock().expect("write queue lock").shutdown = true;
            cvar.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop<W>(
    db: &sled::Db,
    queue: &(Mutex<Queue<W>>, Condvar),
    mut apply: impl FnMut(Vec<W>),
    flushed: &watch::Sender<u64>,
) {
    let mut done = 0u64;
    loop {
        let (writes, target) = {
            let (lock, cvar) = queue;
            let mut queue = lock.lock().expect("write queue lock");
            while queue.issued == done && !queue.shutdown {
                queue = cvar.wait(queue).expect("write queue lock");
            }
            if queue.issued == done {
                break;
            }
            (std::mem::take(&mut queue.writes), queue.issued)
        };
        if !writes.is_empty() {
            apply(writes);
        }
        // Retry until the disk accepts the flush: acknowledging a write
        // that is not durable would break the store's promise.
        let mut backoff = Duration::from_millis(10);
        while let Err(err) = db.flush() {
            tracing::error!(error = %err, "flushing the document store failed; retrying");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        done = target;
        flushed.send_replace(done);
    }
    if let Err(err) = db.flush() {
        tracing::error!(error = %err, "final flush of the document store failed");
    }
}

/// The store could not confirm durability in time.
#[derive(Debug, thiserror::Error)]
#[error("the document store could not make the write durable in time")]
pub struct NotDurable;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn open(dir: &tempfile::TempDir) -> sled::Db {
        sled::Config::new().path(dir.path()).open().expect("opening sled")
    }

    /// A group commit whose `apply` inserts each write's key and reports it.
    fn recording(db: &sled::Db) -> (GroupCommit<&'static str>, mpsc::Receiver<Vec<&'static str>>) {
        let (applied, groups) = mpsc::channel();
        let tree = db.clone();
        let commit = GroupCommit::start(db.clone(), move |writes: Vec<&'static str>| {
            for key in &writes {
                tree.insert(key, "v").expect("insert");
            }
            applied.send(writes).expect("test receiver");
        });
        (commit, groups)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_groups_and_every_write_lands_in_submission_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let (commit, groups) = recording(&db);
        let commit = Arc::new(commit);
        let submitted = Arc::new(Mutex::new(Vec::new()));
        let keys: Vec<&'static str> = (0..64).map(|i| &*format!("k{i:02}").leak()).collect();
        let tasks: Vec<_> = keys
            .iter()
            .map(|&key| {
                let (commit, submitted) = (Arc::clone(&commit), Arc::clone(&submitted));
                tokio::spawn(async move {
                    commit.submit(|| {
                        submitted.lock().unwrap().push(key);
                        key
                    });
                    commit.durable().await.expect("durable");
                    key
                })
            })
            .collect();
        for task in tasks {
            let key = task.await.unwrap();
            assert!(db.get(key).unwrap().is_some(), "{key} is in sled once acknowledged");
        }
        let applied: Vec<_> = groups.try_iter().collect();
        assert_eq!(applied.concat(), *submitted.lock().unwrap(), "applied in submission order");
        assert!(applied.len() <= keys.len());
    }

    #[test]
    fn writes_queued_at_shutdown_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let (commit, groups) = recording(&db);
        commit.submit(|| "last");
        drop(commit);
        assert_eq!(groups.try_iter().flatten().collect::<Vec<_>>(), vec!["last"]);
    }
}
