//! API benchmark against the real server on loopback (not a timed test: it
//! prints numbers). Run with `cargo bench --bench api`; set `PEAT_SIDECAR_BIN`
//! to measure another build (e.g. the static musl release binary) and
//! `PEAT_BENCH_SCALE` (default 1.0; only for quick smoke runs) to scale every
//! request and document count, and `PEAT_BENCH_DIR` to put the data
//! directories elsewhere than the target directory (`/dev/shm`: a file
//! system whose syncs cost nothing, which shows what the disk costs).
//!
//! Reports requests/s and p50/p99 latency at concurrency 1 and 16 with a
//! ~200-byte JSON document for PutDocument (distinct ids), GetDocument
//! (random ids among 10 000), 20 000 updates of one document (first vs last
//! 5 000), the raw floors (sled insert+flush of the same bytes; GetStatus as a
//! no-op round trip) as ratios, start-to-READY time and idle RSS, and per
//! row the CPU time the server and the load generator spent per request.
//! GetStatus and PutDocument at c=16 also run from a lean client that writes
//! prepared HTTP/1.1 requests, to show the generated client's share.
//! Last, 1 000 large documents (~100 KiB of JSON each), written and then
//! updated once each, show that the server's memory stays bounded by its
//! caches rather than by what was written.

#[path = "../tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use connectrpc::Protocol;
use peat_sidecar::proto::peat::sidecar::v1::*;
use rand::Rng;
use support::notify::NotifySocket;
use support::{Client, SidecarOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOCS_FOR_GET: usize = 10_000;
const UPDATES: usize = 20_000;
const WINDOW: usize = 5_000;
const LARGE_DOCS: usize = 1_000;
const LARGE_DOC_FIELDS: usize = 1_000;

/// A ~200-byte JSON document, different for every `seq`.
fn document(seq: usize) -> String {
    format!(
        r#"{{"type":"platform","name":"unit-{seq:06}","status":"READY","lat":{:.6},"lon":{:.6},"alt":{:.1},"readiness":0.87,"capabilities":["eo","ir","relay"],"updated":{}}}"#,
        52.0 + (seq % 1000) as f64 / 1000.0,
        13.0 + (seq % 777) as f64 / 1000.0,
        30.0 + (seq % 100) as f64,
        1_700_000_000_000u64 + seq as u64
    )
}

/// A ~100 KiB JSON document of 1 000 fields; `revision` changes ten of them.
fn large_document(seq: usize, revision: usize) -> String {
    let fields: serde_json::Map<String, serde_json::Value> = (0..LARGE_DOC_FIELDS)
        .map(|field| {
            let revision = if field % 100 == 0 { revision } else { 0 };
            (
                format!("field-{field:04}"),
                format!("doc {seq:06} field {field:04} revision {revision:04} {:0>64}", field).into(),
            )
        })
        .collect();
    serde_json::Value::Object(fields).to_string()
}

struct Measured {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU time the server and the load generator used, when measured.
    cpu: Option<(Duration, Duration)>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }

    fn row(&self, name: &str, concurrency: usize) -> String {
        let per_request = |cpu: Duration| format!("{:.0}", cpu.as_secs_f64() * 1e6 / self.requests as f64);
        let (server, client) = self.cpu.map_or(("".into(), "".into()), |(s, c)| (per_request(s), per_request(c)));
        format!(
            "| {name} | {concurrency} | {} | {:.0} | {:.2} | {:.2} | {server} | {client} |",
            self.requests,
            self.rate(),
            ms(self.percentile(0.50)),
            ms(self.percentile(0.99))
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `total` calls of `call(i)` from `concurrency` workers, each timed.
async fn load<F, Fut>(concurrency: usize, total: usize, call: F) -> Measured
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (call, next) = (Arc::clone(&call), Arc::clone(&next));
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(total / concurrency + 1);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return latencies;
                    }
                    let t = Instant::now();
                    call(i).await;
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for worker in workers {
        latencies.extend(worker.await.expect("benchmark worker"));
    }
    Measured { requests: total, elapsed: started.elapsed(), latencies, cpu: None }
}

/// `load` against the server process `server`, with the CPU time the server
/// and this process (the load generator) spent on it.
async fn load_cpu<F, Fut>(server: i32, concurrency: usize, total: usize, call: F) -> Measured
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let before = (process_cpu(server), own_cpu());
    let mut measured = load(concurrency, total, call).await;
    measured.cpu = Some((process_cpu(server) - before.0, own_cpu() - before.1));
    measured
}

/// A lean Connect client, like `wrk`: unary calls written as prepared bytes
/// on keep-alive HTTP/1.1 connections, and responses read just far enough to
/// check their status. The generated client spends 20–60 µs of CPU per
/// request on the two cores the server runs on; this one leaves the server
/// more of them, as clients on other hosts would.
#[derive(Clone)]
struct LeanClient {
    hostport: Arc<str>,
    idle: Arc<std::sync::Mutex<Vec<LeanConnection>>>,
}

/// A connection not in use, with the bytes read past its last response.
type LeanConnection = (tokio::net::TcpStream, Vec<u8>);

impl LeanClient {
    fn new(hostport: &str) -> Self {
        Self { hostport: hostport.into(), idle: Arc::default() }
    }

    /// The bytes of a Connect JSON call of `method` with `body`.
    fn request(&self, method: &str, body: &str) -> Vec<u8> {
        format!(
            "POST /peat.sidecar.v1.PeatSidecar/{method} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            self.hostport,
            body.len()
        )
        .into_bytes()
    }

    /// Sends a prepared request and returns the response's status code.
    async fn call(&self, request: &[u8]) -> u16 {
        let idle = self.idle.lock().unwrap().pop();
        let (mut stream, mut received) = match idle {
            Some(connection) => connection,
            None => {
                let stream = tokio::net::TcpStream::connect(&*self.hostport).await.expect("connecting to the sidecar");
                stream.set_nodelay(true).unwrap();
                (stream, Vec::with_capacity(4096))
            }
        };
        stream.write_all(request).await.expect("sending a request");
        let status = read_response(&mut stream, &mut received).await;
        self.idle.lock().unwrap().push((stream, received));
        status
    }
}

/// Reads one HTTP/1.1 response from `stream` (the sidecar sends unary bodies
/// chunked) and returns its status code; `received` keeps any bytes read past
/// its end.
async fn read_response(stream: &mut tokio::net::TcpStream, received: &mut Vec<u8>) -> u16 {
    const LAST_CHUNK: &[u8] = b"\r\n0\r\n\r\n";
    loop {
        // The head ends with an empty line; the body (JSON, whose strings
        // cannot hold a raw line break) with an empty last chunk. A body
        // with no chunks ends right after the head, which the search finds
        // from the head's final line break.
        if let Some(head_end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let from = head_end + 2;
            if let Some(at) = received[from..].windows(LAST_CHUNK.len()).position(|w| w == LAST_CHUNK) {
                let status = std::str::from_utf8(&received[9..12]).ok().and_then(|code| code.parse().ok());
                received.drain(..from + at + LAST_CHUNK.len());
                return status.expect("a status line");
            }
        }
        if stream.read_buf(received).await.expect("reading a response") == 0 {
            panic!("the sidecar closed the connection");
        }
    }
}

/// User plus system CPU time of process `pid`.
fn process_cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// User plus system CPU time of this process.
fn own_cpu() -> Duration {
    process_cpu(std::process::id() as i32)
}

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("PEAT_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    ((n as f64 * scale) as usize).max(16)
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Spawn → READY=1 on NOTIFY_SOCKET, on an empty data directory.
fn start_to_ready(work: &std::path::Path, runs: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for run in 0..runs {
        let dir = work.join(format!("ready-{run}"));
        std::fs::create_dir_all(&dir).unwrap();
        let notify = NotifySocket::bind(&dir.join("notify.sock"));
        let config = dir.join("config.yaml");
        std::fs::write(&config, "log_level: warn\n").unwrap();
        let started = Instant::now();
        let mut child = Command::new(support::binary())
            .env_clear()
            .env("NOTIFY_SOCKET", notify.env_value())
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg("tcp://127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning peat-sidecar");
        let message = notify.next("READY=1");
        times.push(started.elapsed());
        assert_eq!(message, "READY=1");
        support::signal(child.id() as i32, libc::SIGTERM);
        child.wait().unwrap();
    }
    times.sort();
    times
}

/// The floor under a durable PutDocument: sled insert + flush of the same bytes, one at a time.
fn sled_floor(work: &std::path::Path, total: usize) -> f64 {
    let db = sled::Config::new().path(work.join("sled-floor")).mode(sled::Mode::HighThroughput).open().unwrap();
    let started = Instant::now();
    for i in 0..total {
        db.insert(format!("c\0doc-{i}"), document(i).as_bytes()).unwrap();
        db.flush().unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// The floor under PutDocument without the RPC stack: the store's own
/// durable `put_json` from `concurrency` tasks in this process.
fn store_floor(rt: &tokio::runtime::Runtime, work: &std::path::Path, concurrency: usize, total: usize) -> Measured {
    let options = peat_sidecar::store::StoreOptions::new(work.join(format!("store-floor-c{concurrency}")));
    let store = peat_sidecar::store::DocumentStore::open(&options).unwrap();
    rt.block_on(load(concurrency, total, move |i| {
        let store = store.clone();
        async move {
            store.put_json("floor", &format!("doc-{i}"), &document(i)).await.expect("store put");
        }
    }))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let binary = support::binary();
    let work_root = std::env::var_os("PEAT_BENCH_DIR").unwrap_or_else(|| env!("CARGO_TARGET_TMPDIR").into());
    let work = tempfile::Builder::new().prefix("peat-bench-").tempdir_in(&work_root).unwrap();
    let size = std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0);
    println!("binary: {} ({:.1} MB)", binary.display(), size as f64 / 1e6);
    println!("data directories under: {}", work.path().display());
    println!("document: {} bytes of JSON", document(0).len());
    println!("cores: {}", std::thread::available_parallelism().map_or(0, |n| n.get()));

    let ready = start_to_ready(work.path(), 10);
    println!(
        "start to READY=1 (empty data dir, 10 runs): min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(ready[0]),
        ms(ready[ready.len() / 2]),
        ms(ready[ready.len() - 1])
    );

    let floor_count = scaled(3_000);
    let sled_rate = sled_floor(work.path(), floor_count);

    let mut sidecar = SidecarOptions::new(&work.path().join("data")).arg("--mesh-listen").arg("disabled").start();
    std::thread::sleep(Duration::from_millis(500));
    println!("idle RSS after start: {:.1} MB", rss_kib(sidecar.pid()) as f64 / 1024.0);

    let server = sidecar.pid();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut rows = Vec::new();
    let mut floors = Vec::new();
    let store_rates: Vec<f64> = [1, 16]
        .into_iter()
        .map(|concurrency| {
            let measured = store_floor(&rt, work.path(), concurrency, scaled(3_000 * concurrency.min(4)));
            rows.push(measured.row("store put_json in-process (floor, no RPC)", concurrency));
            measured.rate()
        })
        .collect();
    rt.block_on(async {
        for (label, client) in [
            ("Connect JSON, HTTP/1.1", sidecar.client_h1(Protocol::Connect, true)),
            ("gRPC, h2c", sidecar.client_h2(Protocol::Grpc, false)),
        ] {
            rows.push(format!("| **{label}** | | | | | | | |"));
            let tag = if label.starts_with("gRPC") { "grpc" } else { "connect" };
            let mut rates = std::collections::HashMap::new();
            for concurrency in [1, 16] {
                let status = load_cpu(server, concurrency, scaled(if concurrency == 1 { 5_000 } else { 40_000 }), {
                    let client = client.clone();
                    move |_| {
                        let client = client.clone();
                        async move {
                            client.get_status(GetStatusRequest::default()).await.expect("GetStatus");
                        }
                    }
                })
                .await;
                rows.push(status.row("GetStatus (no-op round trip)", concurrency));

                let collection = format!("put-{tag}-c{concurrency}");
                let put = load_cpu(server, concurrency, scaled(if concurrency == 1 { 3_000 } else { 30_000 }), {
                    let client = client.clone();
                    move |i| put_document(client.clone(), collection.clone(), format!("doc-{i}"), document(i))
                })
                .await;
                rows.push(put.row("PutDocument, distinct ids", concurrency));
                rates.insert(("status", concurrency), status.rate());
                rates.insert(("put", concurrency), put.rate());
            }
            if tag == "connect" {
                let lean = LeanClient::new(sidecar.addr.strip_prefix("tcp://").expect("a TCP sidecar"));
                // Call `i` sends `requests[i]`, or the only request again and again.
                let calls = |requests: Vec<Vec<u8>>| {
                    let (lean, requests) = (lean.clone(), Arc::new(requests));
                    move |i: usize| {
                        let (lean, requests) = (lean.clone(), Arc::clone(&requests));
                        async move { assert_eq!(lean.call(&requests[i % requests.len()]).await, 200, "request {i}") }
                    }
                };
                let status = load_cpu(server, 16, scaled(40_000), calls(vec![lean.request("GetStatus", "{}")])).await;
                rows.push(status.row("GetStatus (no-op round trip), lean client", 16));
                let requests = (0..scaled(30_000))
                    .map(|i| {
                        let body = serde_json::json!({"collection": "put-lean", "docId": format!("doc-{i}"), "jsonData": document(i)});
                        lean.request("PutDocument", &body.to_string())
                    })
                    .collect::<Vec<_>>();
                let put = load_cpu(server, 16, requests.len(), calls(requests)).await;
                rows.push(put.row("PutDocument, distinct ids, lean client", 16));
            }

            // 10 000 stored documents, then random reads.
            let collection = format!("get-{tag}");
            let stored_docs = scaled(DOCS_FOR_GET);
            load(16, stored_docs, {
                let (client, collection) = (client.clone(), collection.clone());
                move |i| put_document(client.clone(), collection.clone(), format!("doc-{i}"), document(i))
            })
            .await;
            for concurrency in [1, 16] {
                let get = load_cpu(server, concurrency, scaled(if concurrency == 1 { 10_000 } else { 60_000 }), {
                    let (client, collection) = (client.clone(), collection.clone());
                    move |_| {
                        let client = client.clone();
                        let request = GetDocumentRequest {
                            collection: collection.clone(),
                            doc_id: format!("doc-{}", rand::rng().random_range(0..stored_docs)),
                            ..Default::default()
                        };
                        async move {
                            let response = client.get_document(request).await.expect("GetDocument").into_owned();
                            assert!(response.json_data.is_some());
                        }
                    }
                })
                .await;
                rows.push(get.row(&format!("GetDocument, random of {stored_docs}"), concurrency));
                rates.insert(("get", concurrency), get.rate());
            }

            // One document, 20 000 sequential updates with changing content.
            let (total, window_len) = (scaled(UPDATES), scaled(WINDOW));
            let updates = load_cpu(server, 1, total, {
                let client = client.clone();
                let collection = format!("hot-{tag}");
                move |i| put_document(client.clone(), collection.clone(), "the-one".into(), document(i))
            })
            .await;
            let window = |range: std::ops::Range<usize>| Measured {
                requests: range.len(),
                elapsed: updates.latencies[range.clone()].iter().sum(),
                latencies: updates.latencies[range].to_vec(),
                cpu: None,
            };
            let (first, last) = (window(0..window_len), window(total - window_len..total));
            rows.push(first.row(&format!("PutDocument, one doc of {total} updates: first {window_len}"), 1));
            rows.push(last.row(&format!("PutDocument, one doc of {total} updates: last {window_len}"), 1));
            // The same with 16 writers: edits of one document serialise on
            // its lock, but their durability waits share group commits.
            let shared_doc = load_cpu(server, 16, total, {
                let client = client.clone();
                let collection = format!("hot16-{tag}");
                move |i| put_document(client.clone(), collection.clone(), "the-one".into(), document(i))
            })
            .await;
            rows.push(shared_doc.row(&format!("PutDocument, one doc of {total} updates"), 16));
            floors.push(format!(
                "{label}: PutDocument/GetStatus c=1 {:.2}, c=16 {:.2}; GetDocument/GetStatus c=1 {:.2}, c=16 {:.2}; \
                 one-doc updates last/first window {:.2}",
                rates[&("put", 1)] / rates[&("status", 1)],
                rates[&("put", 16)] / rates[&("status", 16)],
                rates[&("get", 1)] / rates[&("status", 1)],
                rates[&("get", 16)] / rates[&("status", 16)],
                last.rate() / first.rate(),
            ));
            floors.push(format!(
                "{label}: PutDocument / in-process store put c=1 {:.2}, c=16 {:.2}; PutDocument c=1 / sled insert+flush {:.2}",
                rates[&("put", 1)] / store_rates[0],
                rates[&("put", 16)] / store_rates[1],
                rates[&("put", 1)] / sled_rate
            ));
        }
    });

    println!();
    println!(
        "| operation | concurrency | requests | req/s | p50 ms | p99 ms | server CPU µs/req | load generator CPU µs/req |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        println!("{row}");
    }
    println!();
    println!("raw floor: sled insert+flush of the same bytes, one at a time: {sled_rate:.0} ops/s ({floor_count} ops)");
    for floor in floors {
        println!("{floor}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_before_large = rss_kib(server);
    println!("idle RSS after the run: {:.1} MB", rss_before_large as f64 / 1024.0);

    let client = sidecar.client_h1(Protocol::Connect, true);
    let large = scaled(LARGE_DOCS);
    let document_bytes = large_document(0, 0).len();
    let large_rates: Vec<f64> = (0..2)
        .map(|revision| {
            let client = client.clone();
            rt.block_on(load(4, large, move |i| {
                put_document(client.clone(), "large".into(), format!("doc-{i}"), large_document(i, revision))
            }))
            .rate()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let rss_after_large = rss_kib(server);
    let (written, growth) = (2 * large * document_bytes, rss_after_large.saturating_sub(rss_before_large) * 1024);
    println!(
        "large documents: {large} of {:.0} KiB written ({:.0}/s), then updated once each ({:.0}/s): \
         idle RSS {:.1} MB after, +{:.1} MB for {:.1} MB of JSON written ({:.2})",
        document_bytes as f64 / 1024.0,
        large_rates[0],
        large_rates[1],
        rss_after_large as f64 / 1024.0,
        growth as f64 / (1 << 20) as f64,
        written as f64 / (1 << 20) as f64,
        growth as f64 / written as f64,
    );
    let (status, took) = sidecar.terminate();
    println!("SIGTERM to exit: {:.1} ms ({status})", ms(took));
}

async fn put_document(client: Client, collection: String, doc_id: String, json_data: String) {
    client
        .put_document(PutDocumentRequest { collection, doc_id, json_data, ..Default::default() })
        .await
        .expect("PutDocument");
}
