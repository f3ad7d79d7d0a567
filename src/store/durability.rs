//! Group commit: journaling queued writes and applying them to sled.
//!
//! Writers queue their prepared writes and then wait for a ticket. Whoever
//! commits takes everything queued so far, appends it to the journal as one
//! record (one disk sync), applies it to sled and then releases every ticket
//! the group covered, so concurrent requests share one disk round trip. When
//! writes come one at a time, each is committed by its own caller, saving two
//! thread hand-offs (on a multi-threaded runtime, which moves its other work
//! to another thread meanwhile); otherwise the store's writer thread commits,
//! so the async runtime's threads keep serving requests while the disk
//! syncs. sled itself is flushed only at checkpoints, on the writer thread;
//! see [`super::journal`]. A group that fails to commit (a full disk) is retried
//! by the writer thread until it succeeds, and its waiters are told at once
//! that their writes are not acknowledged.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::journal::Journal;
use super::sled_flush::SledFlush;

type Encode<W> = Box<dyn FnMut(&[W]) -> Vec<u8> + Send>;
type Apply<W> = Box<dyn FnMut(&mut Vec<W>) -> Result<(), String> + Send>;

struct Queue<W> {
    /// Tickets handed out, and the last ticket whose writes are committed.
    issued: u64,
    committed: u64,
    /// Writes queued since the last group was taken.
    writes: Vec<W>,
    /// How many writes the last group held.
    last_group_len: usize,
    /// A ticket holder needs sled itself flushed.
    checkpoint: bool,
    shutdown: bool,
    /// The journal and sled, while nobody is committing: a committer takes
    /// it for the duration of one group, so groups never overlap.
    committer: Option<Committer<W>>,
}

/// One group of queued writes, taken by a committer.
struct Group<W> {
    writes: Vec<W>,
    checkpoint: bool,
    /// The last ticket the group covers.
    ticket: u64,
}

impl<W> Queue<W> {
    /// Takes the committer and everything queued, if nobody is committing.
    fn take_group(&mut self) -> Option<(Committer<W>, Group<W>)> {
        let committer = self.committer.take()?;
        self.last_group_len = self.writes.len();
        let group = Group {
            writes: std::mem::take(&mut self.writes),
            checkpoint: std::mem::take(&mut self.checkpoint),
            ticket: self.issued,
        };
        Some((committer, group))
    }

    /// Hands back the committer once `group` is committed. The caller then
    /// releases the group's tickets with [`release`], outside the lock.
    fn committed(&mut self, committer: Committer<W>, group: &Group<W>) {
        self.committer = Some(committer);
        self.committed = group.ticket;
    }

    /// Hands back the committer and the group it did not commit: its writes
    /// go back to the front of the queue, still in submission order.
    fn hand_back(&mut self, committer: Committer<W>, group: Group<W>) {
        self.committer = Some(committer);
        self.writes.splice(0..0, group.writes);
        self.checkpoint |= group.checkpoint;
    }
}

type Shared<W> = Arc<(Mutex<Queue<W>>, Condvar)>;

/// How long a ticket waits before its write is reported as not durable.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pauses between attempts at a group that failed to commit.
const FIRST_RETRY: Duration = Duration::from_millis(10);
const LAST_RETRY: Duration = Duration::from_secs(1);

/// What waiting tickets learn from committers.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// The last ticket whose writes are committed.
    released: u64,
    /// The last ticket whose writes an attempt failed to commit, and why.
    failed: u64,
    error: Option<Arc<str>>,
}

pub struct GroupCommit<W> {
    queue: Shared<W>,
    /// A receiver is kept so that tickets never drop the last one (which
    /// wakes the sender's waiters).
    progress: (watch::Sender<Progress>, watch::Receiver<Progress>),
    /// Writes in progress: from [`Self::begin`] until after their ticket.
    in_progress: AtomicUsize,
    attempts: Arc<AttemptClock>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A write in progress; see [`GroupCommit::begin`].
pub struct Writing<'a>(&'a AtomicUsize);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<W: Send + 'static> GroupCommit<W> {
    /// Starts the writer thread. Each group of writes is journaled as the
    /// record `encode` makes of it and then handed to `apply`, which puts
    /// them in `db` and takes them out of the group, or fails and leaves
    /// the group as it was, to be journaled and applied again by the writer
    /// thread (so `apply` must be repeatable: the same writes applied again
    /// leave the same state).
    pub fn start(
        sled: SledFlush,
        journal: Journal,
        encode: impl FnMut(&[W]) -> Vec<u8> + Send + 'static,
        apply: impl FnMut(&mut Vec<W>) -> Result<(), String> + Send + 'static,
    ) -> Self {
        let attempts = Arc::new(AttemptClock::new());
        let committer = Committer {
            sled,
            journal,
            encode: Box::new(encode),
            apply: Box::new(apply),
            attempts: Arc::clone(&attempts),
        };
        let queue = Queue {
            issued: 0,
            committed: 0,
            writes: Vec::new(),
            last_group_len: 0,
            checkpoint: false,
            shutdown: false,
            committer: Some(committer),
        };
        let queue = Arc::new((Mutex::new(queue), Condvar::new()));
        let progress = watch::channel(Progress::default());
        let thread = {
            let (queue, progress) = (Arc::clone(&queue), progress.0.clone());
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || write_until_shutdown(&queue, &progress))
                .expect("spawning the store writer thread")
        };
        Self { queue, progress, in_progress: AtomicUsize::new(0), attempts, thread: Some(thread) }
    }

    /// How long the attempt to commit (journal, apply, checkpoint) that is
    /// in progress has been running, if one is. An attempt that fails
    /// returns at once; one that never returns is a disk that stopped
    /// answering.
    pub fn attempt_running_for(&self) -> Option<Duration> {
        self.attempts.running_for()
    }

    /// Marks a write as in progress until the returned guard drops (after
    /// its ticket). A ticket taken while no other write is in progress is
    /// committed by its own caller.
    pub fn begin(&self) -> Writing<'_> {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        Writing(&self.in_progress)
    }

    /// Queues the write `build` returns; it is committed with the next
    /// ticket, so every submit must be followed by [`Self::durable`] (or
    /// [`Self::checkpoint`]). `build` runs under the queue lock, so writes
    /// are applied in exactly the order they were built (the store numbers
    /// its change log there).
    pub fn submit(&self, build: impl FnOnce() -> W) {
        let mut queue = self.lock();
        let write = build();
        queue.writes.push(write);
    }

    /// Waits until everything submitted before this call is on disk. An
    /// error says the writes are not acknowledged: an attempt to commit them
    /// failed (they are retried, so they may still be applied) or none
    /// succeeded in time.
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
            let mut queue = self.lock();
            let idle = queue.committer.is_some() && queue.issued == queue.committed;
            if idle && queue.writes.is_empty() && !checkpoint {
                // Everything submitted so far is committed.
                return Ok(());
            }
            queue.issued += 1;
            queue.checkpoint |= checkpoint;
            let ticket = queue.issued;
            // Writes come one at a time when no other is in progress and the
            // last group held one. (Under load, a write committed alone would
            // make those about to queue wait for a second sync.) Checkpoints
            // are left to the writer thread: sled flushes take milliseconds.
            let one_at_a_time = self.in_progress.load(Ordering::Relaxed) <= 1 && queue.last_group_len <= 1;
            if idle
                && one_at_a_time
                && !queue.checkpoint
                && may_block_in_place()
                && let Some((mut committer, mut group)) = queue.take_group()
            {
                // Commit in place, on this thread. If the journal is full, or
                // on failure, the writer thread takes over (retrying until
                // the disk takes it; this thread must not wait for that).
                drop(queue);
                // The runtime moves its work to another thread meanwhile: a
                // disk that stops answering must not stop it from serving.
                let outcome = tokio::task::block_in_place(|| committer.try_commit(&mut group, false));
                queue = self.lock();
                match outcome {
                    Ok(true) => {
                        queue.committed(committer, &group);
                        if queue.issued > queue.committed {
                            // Tickets taken meanwhile were left to the writer thread.
                            self.queue.1.notify_one();
                        }
                        drop(queue);
                        release(&self.progress.0, group.ticket);
                        return Ok(());
                    }
                    Ok(false) => queue.hand_back(committer, group),
                    Err(err) => {
                        tracing::error!(error = %err, "committing writes failed; retrying");
                        queue.hand_back(committer, group);
                        fail(&self.progress.0, ticket, &err);
                    }
                }
            }
            self.queue.1.notify_one();
            ticket
        };
        let mut progress = self.progress.1.clone();
        let settled = progress.wait_for(|p| p.released >= ticket || p.failed >= ticket);
        match tokio::time::timeout(DURABLE_TIMEOUT, settled).await {
            Ok(Ok(p)) if p.released >= ticket => Ok(()),
            Ok(Ok(p)) => Err(NotDurable::Failed(p.error.clone().unwrap_or_else(|| "unknown error".into()))),
            _ => Err(NotDurable::TimedOut),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue<W>> {
        self.queue.0.lock().expect("write queue lock")
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

/// Whether this thread may block for a disk sync: only a worker of a
/// multi-threaded runtime can hand its other work over while it does.
fn may_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// The writer thread: commits the groups of waiting tickets their holders
/// left to it, and at shutdown whatever is still queued, then checkpoints.
/// A group that fails goes back to the queue and is tried again, with what
/// was queued since, after a pause: a write is acknowledged only once it is
/// durable, and the disk may recover (a full disk, freed). At shutdown the
/// first failure ends the retries: those writes were never acknowledged.
fn write_until_shutdown<W>(queue: &(Mutex<Queue<W>>, Condvar), progress: &watch::Sender<Progress>) {
    let (lock, cvar) = queue;
    let mut pause = FIRST_RETRY;
    let mut queue = lock.lock().expect("write queue lock");
    loop {
        let work = queue.issued > queue.committed || (queue.shutdown && !queue.writes.is_empty());
        if work && let Some((mut committer, mut group)) = queue.take_group() {
            drop(queue);
            let outcome = committer.try_commit(&mut group, true);
            queue = lock.lock().expect("write queue lock");
            match outcome {
                Ok(_) => {
                    pause = FIRST_RETRY;
                    queue.committed(committer, &group);
                    drop(queue);
                    release(progress, group.ticket);
                }
                Err(err) => {
                    let ticket = group.ticket;
                    queue.hand_back(committer, group);
                    if queue.shutdown {
                        tracing::error!(error = %err, "committing writes failed at shutdown; they were not acknowledged");
                        break;
                    }
                    tracing::error!(error = %err, "committing writes failed; retrying");
                    drop(queue);
                    fail(progress, ticket, &err);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(LAST_RETRY);
                }
            }
            queue = lock.lock().expect("write queue lock");
        } else if queue.shutdown && !work {
            break;
        } else {
            queue = cvar.wait(queue).expect("write queue lock");
        }
    }
    if let Some(committer) = queue.committer.as_mut()
        && let Err(err) = committer.try_checkpoint()
    {
        tracing::error!(error = %err, "final checkpoint of the document store failed; the journal is replayed at the next start");
    }
}

struct Committer<W> {
    sled: SledFlush,
    journal: Journal,
    encode: Encode<W>,
    apply: Apply<W>,
    attempts: Arc<AttemptClock>,
}

impl<W> Committer<W> {
    /// Journals and applies `group`, then checkpoints if it asked for it,
    /// taking from `group` what it has done. Returns `false`, having done
    /// nothing, if the journal is full and `may_checkpoint` is not set. On
    /// failure what is left is either all of it or only the checkpoint.
    /// Doing all of it again is safe: a record cut short is overwritten by
    /// the next append, and a group journaled and applied twice leaves every
    /// key with its last value, as once would.
    fn try_commit(&mut self, group: &mut Group<W>, may_checkpoint: bool) -> Result<bool, String> {
        let _attempt = self.attempts.begin();
        if !group.writes.is_empty() {
            let record = (self.encode)(&group.writes);
            if !self.journal.has_room(record.len()) {
                if !may_checkpoint {
                    return Ok(false);
                }
                checkpoint(&mut self.sled, &mut self.journal)?;
            }
            self.journal.append(&record).map_err(|e| e.to_string())?;
            (self.apply)(&mut group.writes)?;
        }
        if group.checkpoint {
            checkpoint(&mut self.sled, &mut self.journal)?;
            group.checkpoint = false;
        }
        Ok(true)
    }

    fn try_checkpoint(&mut self) -> Result<(), String> {
        let _attempt = self.attempts.begin();
        checkpoint(&mut self.sled, &mut self.journal)
    }
}

/// Flushes sled: everything journaled is then in sled on disk, and the
/// journal starts over.
fn checkpoint(sled: &mut SledFlush, journal: &mut Journal) -> Result<(), String> {
    // Writes wait meanwhile: a checkpoint explains a pause in their latency.
    let started = Instant::now();
    tracing::debug!(journaled_bytes = journal.record_bytes(), "checkpoint started: flushing sled");
    sled.flush().map_err(|e| format!("flushing sled: {e}"))?;
    journal.restart().map_err(|e| e.to_string())?;
    let took_ms = started.elapsed().as_millis() as u64;
    tracing::debug!(took_ms, "checkpoint done: sled is flushed, the journal starts over");
    Ok(())
}

/// When the commit attempt in progress began.
struct AttemptClock {
    epoch: Instant,
    /// Nanoseconds from `epoch` to the start of the attempt in progress,
    /// plus one; zero while there is none.
    started: AtomicU64,
}

/// The attempt timed by [`AttemptClock::begin`]; it ends when this drops.
struct Attempt<'a>(&'a AttemptClock);

impl AttemptClock {
    fn new() -> Self {
        Self { epoch: Instant::now(), started: AtomicU64::new(0) }
    }

    /// Starts timing an attempt, unless one (that this is part of) is timed already.
    fn begin(&self) -> Option<Attempt<'_>> {
        let now = self.epoch.elapsed().as_nanos() as u64 + 1;
        self.started.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| Attempt(self))
    }

    fn running_for(&self) -> Option<Duration> {
        let started = self.started.load(Ordering::Acquire).checked_sub(1)?;
        Some(self.epoch.elapsed().saturating_sub(Duration::from_nanos(started)))
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.0.started.store(0, Ordering::Release);
    }
}

/// Wakes the holders of tickets up to `ticket`. Waking them takes a while, so
/// it happens outside the queue lock, where a later group may be released
/// first.
fn release(progress: &watch::Sender<Progress>, ticket: u64) {
    progress.send_if_modified(|progress| {
        let later = ticket > progress.released;
        if later {
            progress.released = ticket;
        }
        later
    });
}

/// Tells the holders of tickets up to `ticket` that committing their writes failed.
fn fail(progress: &watch::Sender<Progress>, ticket: u64, error: &str) {
    progress.send_modify(|progress| {
        progress.failed = progress.failed.max(ticket);
        progress.error = Some(error.into());
    });
}

/// A write the store could not confirm as durable; it is not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum NotDurable {
    #[error("the document store could not make the write durable ({0}); it is retried, so it may still be applied")]
    Failed(Arc<str>),
    #[error("the document store could not make the write durable in time")]
    TimedOut,
}

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

    /// A group commit on a new journal in `dir` that journals a group as its
    /// keys joined by commas and applies it with `apply`.
    fn start(
        dir: &tempfile::TempDir,
        db: &sled::Db,
        apply: impl FnMut(&mut Vec<&'static str>) -> Result<(), String> + Send + 'static,
    ) -> GroupCommit<&'static str> {
        let (journal, replay) = Journal::open(&journal_path(dir)).expect("opening the journal");
        assert!(replay.is_empty());
        let encode = |writes: &[&'static str]| writes.join(",").into_bytes();
        GroupCommit::start(SledFlush::new(db.clone(), &dir.path().join("db")), journal, encode, apply)
    }

    /// A group commit whose `apply` inserts each write's key and reports the group.
    fn recording(
        dir: &tempfile::TempDir,
        db: &sled::Db,
    ) -> (GroupCommit<&'static str>, mpsc::Receiver<Vec<&'static str>>) {
        let (applied, groups) = mpsc::channel();
        let tree = db.clone();
        let commit = start(dir, db, move |writes| {
            for key in writes.iter() {
                tree.insert(key, "v").expect("insert");
            }
            applied.send(std::mem::take(writes)).expect("test receiver");
            Ok(())
        });
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

    /// A group commit whose `apply` reports the name of the thread it ran on.
    fn reporting_threads(dir: &tempfile::TempDir) -> (GroupCommit<&'static str>, mpsc::Receiver<Option<String>>) {
        let (applied_on, threads) = mpsc::channel();
        let commit = start(dir, &open(dir), move |writes| {
            writes.clear();
            applied_on.send(std::thread::current().name().map(String::from)).expect("test receiver");
            Ok(())
        });
        (commit, threads)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_write_alone_is_committed_by_its_caller_and_others_by_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (commit, threads) = reporting_threads(&dir);
        for key in ["first", "second"] {
            let _writing = commit.begin();
            commit.submit(|| key);
            commit.durable().await.expect("durable");
        }
        let caller = std::thread::current().name().map(String::from);
        assert_eq!(threads.try_iter().collect::<Vec<_>>(), vec![caller.clone(), caller.clone()]);
        assert_eq!(journaled(&dir), vec!["first", "second"]);
        // Nothing queued: the ticket has nothing to wait for.
        commit.durable().await.expect("durable");
        assert!(threads.try_iter().next().is_none());

        // With another write in progress, the writer thread commits.
        let _other = commit.begin();
        let _writing = commit.begin();
        commit.submit(|| "third");
        commit.durable().await.expect("durable");
        assert_eq!(threads.try_iter().collect::<Vec<_>>(), vec![Some("store-writer".to_string())]);
        assert_eq!(journaled(&dir), vec!["first", "second", "third"]);
        drop((_other, _writing));

        // A checkpoint (a sled flush) is left to the writer thread too.
        commit.submit(|| "fourth");
        commit.checkpoint().await.expect("checkpoint");
        assert_eq!(threads.try_iter().collect::<Vec<_>>(), vec![Some("store-writer".to_string())]);
        assert!(journaled(&dir).is_empty(), "the checkpoint restarted the journal");

        // So is a write the journal has no room for: it needs a checkpoint first.
        let big: &'static str = "x".repeat(crate::store::journal::CAPACITY_BYTES as usize / 2 + 1).leak();
        for expected_thread in [caller.clone(), Some("store-writer".to_string())] {
            let _writing = commit.begin();
            commit.submit(|| big);
            commit.durable().await.expect("durable");
            assert_eq!(threads.try_iter().collect::<Vec<_>>(), vec![expected_thread]);
        }
        assert_eq!(journaled(&dir).len(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_single_threaded_runtime_even_a_write_alone_is_left_to_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (commit, threads) = reporting_threads(&dir);
        let _writing = commit.begin();
        commit.submit(|| "alone");
        commit.durable().await.expect("durable");
        assert_eq!(threads.try_iter().collect::<Vec<_>>(), vec![Some("store-writer".to_string())]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_group_that_fails_to_apply_is_retried_by_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (attempted_on, attempts) = mpsc::channel();
        let mut failures = 1;
        let commit = start(&dir, &open(&dir), move |writes| {
            attempted_on.send(std::thread::current().name().map(String::from)).expect("test receiver");
            if failures > 0 {
                failures -= 1;
                return Err("No space left on device".into());
            }
            writes.clear();
            Ok(())
        });
        let writing = commit.begin();
        commit.submit(|| "w");
        // The caller's own attempt fails: it is told so at once (it does not
        // retry on an async runtime thread), and the writer thread retries.
        let err = commit.durable().await.expect_err("the attempt failed");
        assert!(err.to_string().contains("No space left on device"), "{err}");
        drop(writing);
        commit.durable().await.expect("durable once the retry applied it");
        let caller = std::thread::current().name().map(String::from);
        assert_eq!(attempts.try_iter().collect::<Vec<_>>(), vec![caller, Some("store-writer".to_string())]);
        // Each attempt journaled the group; replaying both is harmless.
        assert_eq!(journaled(&dir), vec!["w", "w"]);
    }

    #[test]
    fn writes_queued_at_shutdown_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (commit, groups) = recording(&dir, &open(&dir));
        commit.submit(|| "last");
        drop(commit);
        assert_eq!(groups.try_iter().flatten().collect::<Vec<_>>(), vec!["last"]);
        assert!(journaled(&dir).is_empty(), "shutdown ends with a checkpoint");
    }
}
