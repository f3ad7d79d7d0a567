//! A stand-in for the service manager's end of `NOTIFY_SOCKET`: a datagram
//! socket that collects what the sidecar tells systemd (`READY=1`,
//! `WATCHDOG=1`, `STOPPING=1`).

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`NotifySocket::next`] waits for a message.
const WAIT: Duration = Duration::from_secs(10);

pub struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    pub fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap_or_else(|err| panic!("binding {}: {err}", path.display()));
        Self { path: path.to_owned(), socket }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn env_value(&self) -> &str {
        self.path.to_str().expect("a UTF-8 socket path")
    }

    /// The next message; panics naming `what` if none comes within 10 s.
    pub fn next(&self, what: &str) -> String {
        self.socket.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 256];
        let n = self.socket.recv(&mut buf).unwrap_or_else(|err| panic!("waiting for {what}: {err}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// When the `WATCHDOG=1` pings that arrive within `window` came.
    pub fn pings_within(&self, window: Duration) -> Vec<Instant> {
        let deadline = Instant::now() + window;
        let mut pings = Vec::new();
        let mut buf = [0u8; 256];
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) {
            self.socket.set_read_timeout(Some(left)).unwrap();
            match self.socket.recv(&mut buf) {
                Ok(n) if &buf[..n] == b"WATCHDOG=1" => pings.push(Instant::now()),
                Ok(_) => {}
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(err) => panic!("reading the notify socket: {err}"),
            }
        }
        pings
    }

    /// Closes the socket and removes it, as a service manager that went
    /// away would; the path can be bound again.
    pub fn close(self) {
        drop(self.socket);
        std::fs::remove_file(&self.path).unwrap();
    }
}
