//! Durability under SIGKILL: the real binary takes concurrent writes (new
//! documents, updates of a hot document per writer, deletes) and is killed
//! mid-stream, 20 times over one data directory; some documents are large
//! enough to be stored in pieces. After every restart each
//! acknowledged write is present and intact, each acknowledged delete holds,
//! and every stored document is well-formed. A journal damaged before its
//! last record is refused at startup, losing nothing.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connectrpc::Protocol;
use peat_sidecar::proto::peat::sidecar::v1::*;
use rand::Rng;
use serde_json::{Value, json};
use support::{Client, Listen, SidecarOptions, runtime};

const ITERATIONS: usize = 20;
const WRITERS: usize = 8;
const COLLECTION: &str = "crash";

/// What the clients were told is durable.
#[derive(Default)]
struct Acknowledged {
    /// Document id → content of the last acknowledged write.
    docs: BTreeMap<String, Value>,
    /// Acknowledged deletes (never written again).
    deleted: Vec<String>,
    /// Deletes sent but not acknowledged when the process died (they may have landed).
    delete_in_flight: std::collections::BTreeSet<String>,
    /// Hot document id → last acknowledged version (a later, unacknowledged
    /// update may also have landed).
    hot: BTreeMap<String, u64>,
    /// Hot document id → highest version ever sent.
    hot_sent: BTreeMap<String, u64>,
    writes: usize,
}

/// Every fifth document is large enough (7–37 KB) to be stored in pieces.
fn content(iteration: usize, writer: usize, n: usize) -> Value {
    let len = if n.is_multiple_of(5) { 7_000 + n * 997 % 30_000 } else { 100 + n % 50 };
    json!({ "iteration": iteration, "writer": writer, "n": n, "payload": "x".repeat(len) })
}

async fn writer(client: Client, iteration: usize, writer: usize, acked: Arc<Mutex<Acknowledged>>) {
    let hot = format!("hot-{writer}");
    for n in 0.. {
        let result = if n % 4 == 3 {
            let version = {
                let mut acked = acked.lock().unwrap();
                let sent = acked.hot_sent.entry(hot.clone()).or_default();
                *sent += 1;
                *sent
            };
            // Between large and small, so a stored value turns into pieces and back.
            let pad = "h".repeat(if version % 3 == 0 { 9_000 } else { 10 });
            let json = json!({ "writer": writer, "version": version, "pad": pad });
            client.put_document(put(&hot, &json)).await.map(|_| {
                acked.lock().unwrap().hot.insert(hot.clone(), version);
            })
        } else if n % 10 == 9 {
            let victim = format!("{iteration}-{writer}-{}", n - 5);
            acked.lock().unwrap().delete_in_flight.insert(victim.clone());
            let request =
                DeleteDocumentRequest { collection: COLLECTION.into(), doc_id: victim.clone(), ..Default::default() };
            client.delete_document(request).await.map(|_| {
                let mut acked = acked.lock().unwrap();
                acked.docs.remove(&victim);
                acked.delete_in_flight.remove(&victim);
                acked.deleted.push(victim);
            })
        } else {
            let id = format!("{iteration}-{writer}-{n}");
            let json = content(iteration, writer, n);
            client.put_document(put(&id, &json)).await.map(|_| {
                acked.lock().unwrap().docs.insert(id, json);
            })
        };
        match result {
            Ok(()) => acked.lock().unwrap().writes += 1,
            // The process was killed: stop; this write was not acknowledged.
            Err(_) => return,
        }
    }
}

fn put(id: &str, json: &Value) -> PutDocumentRequest {
    PutDocumentRequest {
        collection: COLLECTION.into(),
        doc_id: id.into(),
        json_data: json.to_string(),
        ..Default::default()
    }
}

async fn verify(client: &Client, acked: &mut Acknowledged) {
    let ids = client
        .list_documents(ListDocumentsRequest { collection: COLLECTION.into(), ..Default::default() })
        .await
        .expect("ListDocuments after restart")
        .into_owned()
        .doc_ids;
    let mut stored = BTreeMap::new();
    for id in &ids {
        let response = client
            .get_document(GetDocumentRequest {
                collection: COLLECTION.into(),
                doc_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("GetDocument after restart")
            .into_owned();
        let json = response.json_data.unwrap_or_else(|| panic!("{id} is listed but has no content"));
        let value: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{id} is not JSON ({e}): {json}"));
        stored.insert(id.clone(), value);
    }
    for (id, expected) in &acked.docs {
        if !stored.contains_key(id) && acked.delete_in_flight.contains(id) {
            continue;
        }
        assert_eq!(stored.get(id), Some(expected), "acknowledged document {id} lost or changed");
    }
    for id in &acked.deleted {
        assert!(!stored.contains_key(id), "acknowledged delete of {id} was undone");
    }
    for (id, version) in &acked.hot {
        let stored = stored.get(id).unwrap_or_else(|| panic!("hot document {id} lost"));
        let got = stored["version"].as_u64().expect("a version");
        let sent = acked.hot_sent[id];
        assert!(
            (*version..=sent).contains(&got),
            "{id}: acknowledged version {version}, sent up to {sent}, stored {got}"
        );
        let pad = stored["pad"].as_str().map_or(0, str::len);
        assert_eq!(pad, if got % 3 == 0 { 9_000 } else { 10 }, "{id}: version {got} stored with a pad of {pad}");
    }
    // Settle the deletes that were in flight: the restarted process holds
    // whichever outcome landed, and it is final.
    for id in std::mem::take(&mut acked.delete_in_flight) {
        if !stored.contains_key(&id) {
            acked.docs.remove(&id);
            acked.deleted.push(id);
        }
    }
    // Writes that were in flight at the kill may or may not have landed,
    // but whatever landed is a whole document.
    for (id, value) in &stored {
        if id.starts_with("hot-") {
            assert!(value["writer"].is_u64() && value["version"].is_u64(), "{id}: {value}");
        } else {
            let parts: Vec<usize> = id.split('-').map(|p| p.parse().unwrap()).collect();
            assert_eq!(value, &content(parts[0], parts[1], parts[2]), "{id} is torn");
        }
    }
}

#[test]
fn acknowledged_writes_survive_sigkill_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let options = SidecarOptions::new(&dir.path().join("data")).listen(Listen::Tcp);
    let mut sidecar = options.clone().start();
    let started = Instant::now();
    let mut per_iteration = Vec::new();
    for iteration in 0..ITERATIONS {
        let before = acked.lock().unwrap().writes;
        let kill_after = Duration::from_millis(rand::rng().random_range(50..300));
        let pid = sidecar.pid();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for w in 0..WRITERS {
                // Alternate protocols: the durability promise holds for all.
                let client = if w % 2 == 0 {
                    sidecar.client_h2(Protocol::Grpc, false)
                } else {
                    sidecar.client_h1(Protocol::Connect, true)
                };
                tasks.push(tokio::spawn(writer(client, iteration, w, Arc::clone(&acked))));
            }
            // Kill mid-stream: a random time after the first acknowledgement.
            let deadline = Instant::now() + Duration::from_secs(20);
            while acked.lock().unwrap().writes == before {
                assert!(Instant::now() < deadline, "no write acknowledged within 20 s");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(kill_after).await;
            support::signal(pid, libc::SIGKILL);
            for task in tasks {
                tokio::time::timeout(Duration::from_secs(20), task).await.expect("writers stop").unwrap();
            }
        });
        drop(sidecar);
        sidecar = options.clone().start();
        let mut acked = acked.lock().unwrap();
        per_iteration.push(acked.writes - before);
        rt.block_on(async { verify(&sidecar.client_h2(Protocol::Grpc, false), &mut acked).await });
    }
    let acked = acked.lock().unwrap();
    println!(
        "{ITERATIONS} kills in {:?}: acknowledged writes per iteration {per_iteration:?}, {} documents, {} deletes",
        started.elapsed(),
        acked.docs.len(),
        acked.deleted.len()
    );
    assert!(per_iteration.iter().all(|n| *n > 0), "every iteration acknowledged writes before the kill");
}

#[test]
fn a_journal_damaged_before_its_last_record_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = runtime();
    let sidecar = SidecarOptions::new(&data).start();
    let mut acked = Acknowledged::default();
    rt.block_on(async {
        let client = sidecar.client_h1(Protocol::Connect, true);
        for n in 0..3 {
            let (id, json) = (format!("0-0-{n}"), content(0, 0, n));
            client.put_document(put(&id, &json)).await.unwrap();
            acked.docs.insert(id, json);
        }
    });
    let options = sidecar.kill();

    // One at a time, each write is a journal record of its own. Damage a
    // payload byte of the first (the journal's header and each record's are
    // 16 bytes).
    let journal = data.join(peat_sidecar::store::JOURNAL_FILE);
    let pristine = std::fs::read(&journal).unwrap();
    let mut damaged = pristine.clone();
    damaged[16 + 16 + 4] ^= 0x5A;
    std::fs::write(&journal, &damaged).unwrap();
    let (status, output) = options.clone().start_expecting_failure();
    assert!(!status.success());
    assert!(output.contains("record 1 at byte 16 is damaged, but record 2"), "{output}");
    assert_eq!(std::fs::read(&journal).unwrap(), damaged, "the damaged journal is left for repair");

    // Repaired, every acknowledged write is there.
    std::fs::write(&journal, &pristine).unwrap();
    let sidecar = options.start();
    rt.block_on(async { verify(&sidecar.client_h1(Protocol::Connect, true), &mut acked).await });
}
