//! Runs the real `peat-sidecar` binary for tests and talks to it through the
//! generated API client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use peat_sidecar::proto::peat::sidecar::v1::{
    GetDocumentRequest, GetStatusRequest, GetSyncStatsRequest, ListDocumentsRequest,
};

pub struct Sidecar {
    child: Option<Child>,
    pub api: String,
    pub stderr: PathBuf,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sidecar {
    /// Starts `peat-sidecar serve` with `args` and `env`, and waits until its API answers.
    pub async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let api = format!("tcp://127.0.0.1:{}", free_port());
        let stderr = dir.join("sidecar.log");
        let child = command(dir, &api, args, env)
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start peat-sidecar");
        let sidecar = Self { child: Some(child), api, stderr };
        let client = peat_sidecar::ctl::connect(&sidecar.api).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.get_status(GetStatusRequest::default()).await.is_err() {
            assert!(Instant::now() < deadline, "the sidecar did not come up; log:\n{}", sidecar.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sidecar
    }

    /// Runs `peat-sidecar serve` expecting it to fail at startup; returns its status and stderr.
    pub fn run_to_failure(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
        let api = format!("tcp://127.0.0.1:{}", free_port());
        let mut child = command(dir, &api, args, env).stderr(Stdio::piped()).spawn().expect("start peat-sidecar");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let output = child.wait_with_output().unwrap();
                return (status, String::from_utf8_lossy(&output.stderr).into_owned());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the sidecar kept running although its configuration is invalid");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The document's JSON through the API, or `None` when not found.
    pub async fn get(&self, collection: &str, doc_id: &str) -> Option<serde_json::Value> {
        let client = peat_sidecar::ctl::connect(&self.api).unwrap();
        let request = GetDocumentRequest { collection: collection.into(), doc_id: doc_id.into(), ..Default::default() };
        let response = client.get_document(request).await.ok()?.into_owned();
        response.json_data.map(|json| serde_json::from_str(&json).unwrap())
    }

    pub async fn list(&self, collection: &str) -> Vec<String> {
        let client = peat_sidecar::ctl::connect(&self.api).unwrap();
        let request = ListDocumentsRequest { collection: collection.into(), ..Default::default() };
        client.list_documents(request).await.unwrap().into_owned().doc_ids
    }

    /// Mesh bytes (sent, received) so far, from `GetSyncStats`.
    pub async fn sync_bytes(&self) -> (u64, u64) {
        let client = peat_sidecar::ctl::connect(&self.api).unwrap();
        let stats = client.get_sync_stats(GetSyncStatsRequest::default()).await.unwrap().into_owned();
        (stats.bytes_sent, stats.bytes_received)
    }

    /// The `grpc.health.v1` status of `service` as Connect JSON names it
    /// (`SERVING`, `NOT_SERVING`), or the error code (`not_found`).
    pub async fn health(&self, service: &str) -> String {
        let hostport = self.api.strip_prefix("tcp://").expect("a TCP sidecar");
        let body = serde_json::json!({ "service": service }).to_string().into_bytes();
        let headers = [("content-type", "application/json")];
        let response = super::raw_post_to(hostport, false, "/grpc.health.v1.Health/Check", &headers, body).await;
        let json: serde_json::Value = serde_json::from_slice(&response.body).expect("a JSON answer");
        let field = if response.status.is_success() { "status" } else { "code" };
        json[field].as_str().unwrap_or_else(|| panic!("no {field} in {json}")).to_owned()
    }

    /// Sends SIGTERM and waits for the exit; returns the status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = start + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the sidecar did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn command(dir: &Path, api: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_peat-sidecar"));
    command
        .arg("--listen")
        .arg(api)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}
