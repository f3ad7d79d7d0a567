//! Two packaged sidecars on one host, each in its own network namespace
//! joined by a veth pair on 198.18.0.0/24 (a test range), with the same
//! formation key: a document written to one must appear on the other, and
//! an edit made on the second must come back to the first; a third sidecar
//! with another key, dialing in, must get nothing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::host;

const ADDRS: [&str; 2] = ["198.18.0.1", "198.18.0.2"];
const API_PORTS: [u16; 3] = [50051, 50051, 50052];

/// Removes the namespaces and stops the sidecars however the test ends.
struct Lab {
    /// Namespace and veth names, unique to this process.
    netns: [String; 2],
    veth: [String; 2],
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGTERM first: the daemon exits promptly on it.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

fn in_ns(ns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

fn ip(args: &[&str]) -> Result<()> {
    host::output(Command::new("ip").args(args)).map(|_| ())
}

pub fn run(binary: &Path, work: &Path) -> Result<()> {
    std::fs::create_dir_all(work)?;
    let pid = std::process::id();
    let mut lab = Lab {
        netns: [format!("peatvm-{pid}-a"), format!("peatvm-{pid}-b")],
        // Interface names have at most 15 characters.
        veth: [format!("pv{pid}a"), format!("pv{pid}b")],
        children: Vec::new(),
    };
    for ns in &lab.netns {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    let (ns, veth) = (&lab.netns, &lab.veth);
    ip(&["link", "add", &veth[0], "netns", &ns[0], "type", "veth", "peer", "name", &veth[1], "netns", &ns[1]])?;
    for i in 0..2 {
        ip(&["-n", &ns[i], "addr", "add", &format!("{}/24", ADDRS[i]), "dev", &veth[i]])?;
        ip(&["-n", &ns[i], "link", "set", &veth[i], "up"])?;
    }

    let key_file = |name: &str| -> Result<std::path::PathBuf> {
        let key = host::output(Command::new(binary).arg("keygen")).context("peat-sidecar keygen")?;
        let path = work.join(name);
        std::fs::write(&path, key.trim())?;
        Ok(path)
    };
    let (formation_key, other_key) = (key_file("formation.key")?, key_file("other.key")?);
    // Nodes 0 and 1 share the formation key; node 2 (beside node 1) dials
    // node 0 with another key and must be refused.
    let nodes = [
        (0, API_PORTS[0], format!("{}:7420", ADDRS[0]), &formation_key, format!("{}:7420", ADDRS[1])),
        (1, API_PORTS[1], format!("{}:7420", ADDRS[1]), &formation_key, format!("{}:7420", ADDRS[0])),
        (1, API_PORTS[2], format!("{}:7421", ADDRS[1]), &other_key, format!("{}:7420", ADDRS[0])),
    ];
    for (i, (ns, port, mesh, key, peer)) in nodes.iter().enumerate() {
        let data = work.join(format!("data-{i}"));
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(work.join(format!("node-{i}.log")))?;
        let child = in_ns(&lab.netns[*ns], binary)
            .arg("serve")
            .args(["--listen", &format!("tcp://127.0.0.1:{port}"), "--data-dir"])
            .arg(&data)
            .args(["--node-id", &format!("vm-node-{i}"), "--app-id", "vm-test", "--shared-key-file"])
            .arg(key)
            .args(["--mesh-listen", &format!("tcp://{mesh}"), "--peer", peer])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting peat-sidecar serve in a namespace")?;
        lab.children.push(child);
    }
    let netns = lab.netns.clone();
    let ctl = |i: usize, args: &[&str]| -> Result<String> {
        let (ns, port, ..) = &nodes[i];
        host::output(in_ns(&netns[*ns], binary).args(["ctl", "--addr", &format!("tcp://127.0.0.1:{port}")]).args(args))
    };
    let logs = || {
        (0..nodes.len())
            .map(|i| format!("node {i} log:\n{}", host::tail(&work.join(format!("node-{i}.log")), 30)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for i in 0..nodes.len() {
        wait_for(Duration::from_secs(30), || ctl(i, &["status"]).is_ok())
            .with_context(|| format!("node {i} did not serve its API\n{}", logs()))?;
    }
    println!("three sidecars serve; writing on node 0");
    ctl(0, &["put", "vmtest", "doc-1", r#"{"written_by":"node-0","n":1}"#])?;
    wait_for(Duration::from_secs(60), || ctl(1, &["get", "vmtest", "doc-1"]).is_ok_and(|out| out.contains("node-0")))
        .with_context(|| format!("node 1 never saw doc-1 written on node 0\n{}", logs()))?;
    println!("node 1 has doc-1; editing it there");
    ctl(1, &["put", "vmtest", "doc-1", r#"{"written_by":"node-1","n":2}"#])?;
    wait_for(Duration::from_secs(60), || ctl(0, &["get", "vmtest", "doc-1"]).is_ok_and(|out| out.contains("node-1")))
        .with_context(|| format!("node 0 never saw node 1's edit of doc-1\n{}", logs()))?;
    println!("node 0 has node 1's edit: the mesh synced both ways");
    // By now node 2 has had as long as node 1 to sync, and then some.
    std::thread::sleep(Duration::from_secs(3));
    if ctl(2, &["get", "vmtest", "doc-1"]).is_ok() {
        bail!("node 2, with another formation key, received doc-1\n{}", logs());
    }
    println!("node 2 (another key) has no doc-1: the formation key is enforced");
    let peers = ctl(0, &["peers"]).unwrap_or_default();
    println!("node 0 peers:\n{}", peers.trim_end());
    drop(lab);
    Ok(())
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("gave up after {} s", limit.as_secs())
}
