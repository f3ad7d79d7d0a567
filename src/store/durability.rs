//! Group commit: the store's single writer thread.
//!
//! Writers queue their prepared writes and wait for a ticket. The writer
//! thread takes everything queued so far, appends it to the journal as one
//! record (one disk sync), applies it to sled and then releases every ticket
//! the group covered, so concurrent requests share one disk round trip. sled
//! itself is flushed only at checkpoints; see [`super::journal`].

use std::fmt::Display;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::journal::Journal;

struct Queue<W> {
    /// Tickets handed out; the writes (if any) behind them wait in `writes`.
    issued: u64,
    writes: Vec<W>,
    /// A ticket holder needs sled itself flushed.
    checkpoint: bool,
    shutdown: bool,
}

pub struct GroupCommit<W> {
    queue: Arc<(Mutex<Queue<W>>, Condvar)>,
    flushed: watch::Receiver<u64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<W: Send + 'static> GroupCommit<W> {
    /// Starts the writer thread. Each group of writes is journaled as the
    /// record `encode` makes of it and then handed to `apply`, which must not
    /// return before the writes are in `db` (it retries on its own: a write
    /// that was queued cannot be taken back).
    pub fn start(
        db: sled::Db,
        journal: Journal,
        encode: impl FnMut(&[W]) -> Vec<u8> + Send + 'static,
        apply: impl FnMut(Vec<W>) + Send + 'static,
    ) -> Self {
        let queue = Queue { issued: 0, writes: Vec::new(), checkpoint: false, shutdown: false };
        let queue = Arc::new((Mutex::new(queue), Condvar::new()));
        let (flushed_tx, flushed) = watch::channel(0u64);
        let worker_queue = Arc::clone(&queue);
        let writer = Writer { db, journal, encode, apply };
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(&worker_queue, &flushed_tx))
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

    /// Waits until everything submitted before this call is on disk.
    pub async fn durable(&self) -> Result<(), NotDurable> {
        self.ticket(false).await
    }

    /// Waits until everything submitted before this call, and everything
    /// written to sled directly, is on disk.
    pub async fn checkpoint(&self) -> Result<(), NotDurable> {
        self.ticket(true).await
    }

    async fn ticket(&self, checkpoint: bool) -> Result<(), NotDurable> {
        let ticket = {
            let (lock, cvar) = &*self.queue;
            let mut queue = lock.lock().expect("write queue lock");
            queue.issued += 1;
            queue.checkpoint |= checkpoint;
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

struct Writer<E, A> {
    db: sled::Db,
    journal: Journal,
    encode: E,
    apply: A,
}

impl<E, A> Writer<E, A> {
    fn run<W>(mut self, queue: &(Mutex<Queue<W>>, Condvar), flushed: &watch::Sender<u64>)
    where
        E: FnMut(&[W]) -> Vec<u8>,
        A: FnMut(Vec<W>),
    {
        let mut done = 0u64;
        loop {
            let (writes, target, checkpoint) = {
                let (lock, cvar) = queue;
                let mut queue = lock.lock().expect("write queue lock");
                while queue.issued == done && !queue.shutdown {
                    queue = cvar.wait(queue).expect("write queue lock");
                }
                if queue.issued == done {
                    break;
                }
                (std::mem::take(&mut queue.writes), queue.issued, std::mem::take(&mut queue.checkpoint))
            };
            if !writes.is_empty() {
                let record = (self.encode)(&writes);
                if !self.journal.has_room(record.len()) {
                    self.checkpoint();
                }
                // Acknowledging a write that is not durable would break the
                // store's promise: retry until the disk takes it.
                retry("journaling writes", || self.journal.append(&record));
                (self.apply)(writes);
            }
            if checkpoint {
                self.checkpoint();
            }
            done = target;
            flushed.send_replace(done);
        }
        if let Err(err) = self.try_checkpoint() {
            tracing::error!(error = %err, "final checkpoint of the document store failed; the journal is replayed at the next start");
        }
    }

    /// Checkpoints, retrying until it succeeds.
    fn checkpoint(&mut self) {
        retry("checkpointing the document store", || self.try_checkpoint());
    }

    /// Flushes sled: everything journaled is then in sled on disk, and the
    /// journal starts over.
    fn try_checkpoint(&mut self) -> Result<(), String> {
        self.db.flush().map_err(|e| format!("flushing sled: {e}"))?;
        self.journal.restart().map_err(|e| e.to_string())
    }
}

/// Runs `operation` until it succeeds, logging each failure and backing off.
pub fn retry<T, E: Display>(what: &str, mut operation: impl FnMut() -> Result<T, E>) -> T {
    let mut backoff = Duration::from_millis(10);
    loop {
        match operation() {
            Ok(value) => return value,
            Err(err) => {
                tracing::error!(error = %err, "{what} failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
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
        sled::Config::new().path(dir.path().join("db")).open().expect("opening sled")
    }

    fn journal_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join("journal")
    }

    /// The payloads the journal in `dir` would replay at open.
    fn journaled(dir: &tempfile::TempDir) -> Vec<String> {
        let (_, records) = Journal::open(&journal_path(dir)).expect("opening the journal");
        records.into_iter().map(|r| String::from_utf8(r).unwrap()).collect()
    }

    /// A group commit that journals a group as its keys joined by commas and
    /// whose `apply` inserts each write's key and reports the group.
    fn recording(
        dir: &tempfile::TempDir,
        db: &sled::Db,
    ) -> (GroupCommit<&'static str>, mpsc::Receiver<Vec<&'static str>>) {
        let (applied, groups) = mpsc::channel();
        let tree = db.clone();
        let (journal, replay) = Journal::open(&journal_path(dir)).expect("opening the journal");
        assert!(replay.is_empty());
        let commit = GroupCommit::start(
            db.clone(),
            journal,
            |writes: &[&'static str]| writes.join(",").into_bytes(),
            move |writes: Vec<&'static str>| {
                for key in &writes {
                    tree.insert(key, "v").expect("insert");
                }
                applied.send(writes).expect("test receiver");
            },
        );
        (commit, groups)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_groups_and_every_write_lands_in_submission_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let (commit, groups) = recording(&dir, &db);
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
        // Each group was journaled as one record, in the same order.
        let groups: Vec<String> = applied.iter().map(|group| group.join(",")).collect();
        assert_eq!(journaled(&dir), groups);

        // A checkpoint flushes sled; the journal then starts over.
        commit.checkpoint().await.expect("checkpoint");
        assert!(journaled(&dir).is_empty());
        commit.submit(|| "after");
        commit.durable().await.expect("durable");
        assert_eq!(journaled(&dir), vec!["after"]);
    }

    #[test]
    fn writes_queued_at_shutdown_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let (commit, groups) = recording(&dir, &db);
        commit.submit(|| "last");
        drop(commit);
        assert_eq!(groups.try_iter().flatten().collect::<Vec<_>>(), vec!["last"]);
        assert!(journaled(&dir).is_empty(), "shutdown ends with a checkpoint");
    }
}
