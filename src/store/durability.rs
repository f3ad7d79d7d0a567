//! Group commit: many concurrent writers share one sled flush.
//!
//! A writer applies its batch, takes a ticket, and waits until a flush that
//! *started after* the ticket was taken completes. One background thread
//! flushes whenever tickets are outstanding, so under load a single fsync
//! acknowledges every write that arrived while the previous one ran.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Default)]
struct Tickets {
    issued: u64,
    shutdown: bool,
}

pub struct GroupCommit {
    tickets: Arc<(Mutex<Tickets>, Condvar)>,
    flushed: watch::Receiver<u64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    pub fn start(db: sled::Db) -> Self {
        let tickets: Arc<(Mutex<Tickets>, Condvar)> = Arc::default();
        let (flushed_tx, flushed) = watch::channel(0u64);
        let worker_tickets = Arc::clone(&tickets);
        let thread = std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || flush_loop(&db, &worker_tickets, &flushed_tx))
            .expect("spawning the store flush thread");
        Self { tickets, flushed, thread: Some(thread) }
    }

    /// Waits until everything written before this call is on disk.
    pub async fn durable(&self) -> Result<(), NotDurable> {
        let ticket = {
            let (lock, cvar) = &*self.tickets;
            let mut t = lock.lock().expect("ticket lock");
            t.issued += 1;
            cvar.notify_one();
            t.issued
        };
        let mut flushed = self.flushed.clone();
        match tokio::time::timeout(Duration::from_secs(30), flushed.wait_for(|done| *done >= ticket)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(NotDurable),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        {
            let (lock, cvar) = &*self.tickets;
            lock.lock().expect("ticket lock").shutdown = true;
            cvar.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn flush_loop(db: &sled::Db, tickets: &(Mutex<Tickets>, Condvar), flushed: &watch::Sender<u64>) {
    let mut done = 0u64;
    loop {
        let target = {
            let (lock, cvar) = tickets;
            let mut t = lock.lock().expect("ticket lock");
            while t.issued == done && !t.shutdown {
                t = cvar.wait(t).expect("ticket lock");
            }
            if t.issued == done {
                break;
            }
            t.issued
        };
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
