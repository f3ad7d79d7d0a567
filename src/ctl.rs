//! `peat-sidecar ctl`: a small client for operators and scripts, talking to a
//! running sidecar over the same API applications use.

use std::io::Read;

use anyhow::{Context, bail};
use connectrpc::client::{ClientConfig, Http2Connection, SharedHttp2Connection};

use crate::cli::{CtlAction, CtlArgs};
use crate::listen::ListenAddr;
use crate::proto::peat::sidecar::v1::*;

pub type Client = PeatSidecarClient<SharedHttp2Connection>;

/// A client for the API at `addr` (`tcp://HOST:PORT` or `unix:///path`).
pub fn connect(addr: &str) -> anyhow::Result<Client> {
    let (connection, base) = match ListenAddr::parse(addr)? {
        ListenAddr::Tcp(hostport) => {
            let uri: http::Uri = format!("http://{hostport}").parse().context("API address")?;
            (Http2Connection::lazy_plaintext(uri.clone()), uri)
        }
        ListenAddr::Unix(path) => {
            let uri: http::Uri = "http://localhost".parse().expect("static URI");
            (Http2Connection::lazy_unix(path, uri.clone()), uri)
        }
    };
    Ok(PeatSidecarClient::new(connection.shared(64), ClientConfig::new(base)))
}

/// Runs one `ctl` action; returns the process exit code.
pub async fn run(args: CtlArgs, default_addr: &str) -> anyhow::Result<i32> {
    let addr = args.addr.as_deref().unwrap_or(default_addr);
    let client = connect(addr)?;
    let context = || format!("calling the sidecar at {addr}");
    match args.action {
        CtlAction::Status => {
            let status = client.get_status(GetStatusRequest::default()).await.with_context(context)?.into_owned();
            let phase = status.phase.as_known().map_or("UNKNOWN", |p| match p {
                NodePhase::NODE_PHASE_INITIALIZING => "INITIALIZING",
                NodePhase::NODE_PHASE_READY => "READY",
                NodePhase::NODE_PHASE_SYNCING => "SYNCING",
                NodePhase::NODE_PHASE_SHUTTING_DOWN => "SHUTTING_DOWN",
                NodePhase::NODE_PHASE_UNSPECIFIED => "UNSPECIFIED",
            });
            println!("node_id: {}", status.node_id);
            println!("endpoint_addr: {}", status.endpoint_addr);
            println!("phase: {phase}");
            println!("sync_active: {}", status.sync_active);
            println!("connected_peers: {}", status.connected_peers);
        }
        CtlAction::Put { collection, doc_id, json } => {
            let json_data = if json == "-" {
                let mut buf = String::new();
                std::io::stdin().read_to_string(&mut buf).context("reading the document from stdin")?;
                buf
            } else {
                json
            };
            client
                .put_document(PutDocumentRequest { collection, doc_id, json_data, ..Default::default() })
                .await
                .with_context(context)?;
        }
        CtlAction::Get { collection, doc_id } => {
            let response = client
                .get_document(GetDocumentRequest { collection, doc_id, ..Default::default() })
                .await
                .with_context(context)?
                .into_owned();
            match response.json_data {
                Some(json) => println!("{json}"),
                None => {
                    eprintln!("not found");
                    return Ok(1);
                }
            }
        }
        CtlAction::Delete { collection, doc_id } => {
            client
                .delete_document(DeleteDocumentRequest { collection, doc_id, ..Default::default() })
                .await
                .with_context(context)?;
        }
        CtlAction::List { collection } => {
            let response = client
                .list_documents(ListDocumentsRequest { collection, ..Default::default() })
                .await
                .with_context(context)?
                .into_owned();
            for id in response.doc_ids {
                println!("{id}");
            }
        }
        CtlAction::Peers => {
            let response = client.list_peers(ListPeersRequest::default()).await.with_context(context)?.into_owned();
            for peer in response.peers {
                let state = if peer.connected { "connected" } else { "disconnected" };
                println!("{}\t{}\t{state}", peer.endpoint_id, peer.addresses.join(","));
            }
        }
        CtlAction::Watch { collections } => {
            let mut stream =
                client.subscribe(SubscribeRequest { collections, ..Default::default() }).await.with_context(context)?;
            while let Some(message) = stream.message().await.with_context(context)? {
                let change: DocumentChange = message.to_owned_message();
                let kind = match change.change_type.as_known() {
                    Some(ChangeType::CHANGE_TYPE_DELETE) => "delete",
                    _ => "upsert",
                };
                let data = change.json_data.as_deref().map(serde_json::from_str::<serde_json::Value>).transpose()?;
                let line = serde_json::json!({
                    "collection": change.collection,
                    "doc_id": change.doc_id,
                    "change": kind,
                    "data": data,
                });
                println!("{line}");
            }
            bail!("the sidecar ended the change stream");
        }
    }
    Ok(0)
}
