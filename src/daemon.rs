//! The `serve` command: wires settings, store, API and background tasks
//! together, then runs until SIGTERM/SIGINT and shuts down in order:
//! stop accepting, drain in-flight requests, flush the store, exit 0.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::{Context, bail};
use connectrpc::{ConnectRpcService, Limits, Router};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{oneshot, watch};

use crate::api::Api;
use crate::config::{DataDirSource, Settings};
use crate::listen::{ListenAddr, Listener};
use crate::mesh::{Mesh, MeshOptions};
use crate::node::{Node, Phase};
use crate::proto::peat::sidecar::v1::{PEAT_SIDECAR_SERVICE_NAME, PeatSidecarExt};
use crate::store::{DocumentStore, StoreOptions};
use crate::systemd;

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/peat_sidecar_descriptor.bin"));
static HEALTH_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/health_descriptor.bin"));

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // One process-wide TLS provider, whichever crates ask for rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (data_dir, source) = settings.resolve_data_dir();
    match source {
        DataDirSource::UserState => tracing::info!(
            data_dir = %data_dir.display(),
            "running unprivileged without a configured data_dir; using the per-user state directory"
        ),
        _ => tracing::info!(data_dir = %data_dir.display(), ?source, "data directory"),
    }
    create_data_dir(&data_dir)?;
    // Validate the mesh settings before touching the store, so a bad key or
    // listen address fails fast.
    let mesh_options = MeshOptions::from_settings(&settings)?;

    let store = DocumentStore::open(&StoreOptions {
        path: data_dir.clone(),
        encryption_key: settings.encryption_key()?,
        max_document_bytes: settings.max_document_bytes,
        document_cache_bytes: settings.document_cache_bytes,
        page_cache_bytes: settings.page_cache_bytes,
    })?;
    let node_id = store.node_id(settings.node_id.as_deref()).await?;
    let node = Arc::new(Node::new(node_id));

    // UDS Remote Agent watcher: settings (and TLS files) are checked here, before READY.
    let agent_watcher = crate::watcher::WatcherConfig::from_settings(&settings, &node.id)?
        .map(|config| crate::watcher::Watcher::start(config, store.clone()));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // `mesh_listen: disabled` with no peers to dial means no mesh at all.
    let mesh = if settings.mesh_listen.as_deref() == Some("disabled") && mesh_options.peers.is_empty() {
        None
    } else {
        Some(Mesh::start(mesh_options, store.clone(), Arc::clone(&node), shutdown_rx.clone()).await?)
    };
    let api = Arc::new(Api::new(store.clone(), Arc::clone(&node), mesh, shutdown_rx, settings.subscribe_backlog_bytes));
    let router = api.register(Router::new());
    let (router, health) = connectrpc_health::install_static(router, [PEAT_SIDECAR_SERVICE_NAME]);
    let watcher_health = agent_watcher.as_ref().map(|watcher| watcher.report_health(Arc::clone(&health)));
    let mut reflector = connectrpc_reflection::Reflector::from_descriptor_set_bytes(DESCRIPTOR_SET)
        .context("loading the API descriptor set for reflection")?;
    reflector
        .add_descriptor_set_bytes(HEALTH_DESCRIPTOR_SET)
        .context("loading the health descriptor set for reflection")?;
    let router = connectrpc_reflection::install(router, reflector);
    let service = ConnectRpcService::new(router).with_limits(
        Limits::default()
            .with_max_request_body_size(settings.max_request_bytes)
            .with_max_message_size(settings.max_request_bytes),
    );

    let listen = ListenAddr::parse(&settings.listen)?;
    let listener = Listener::bind(&listen, settings.socket_mode()?).await?;
    let bound = listener.local_addr();

    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (storage_failed, storage_failure) = oneshot::channel();
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
            // A restart recovers every acknowledged write from the journal;
            // staying up would refuse every write.
            Ok(error) = storage_failure => {
                tracing::error!(%error, "the document store can no longer write; shutting down to be restarted");
            }
        }
    };

    node.set_phase(Phase::Ready);
    tracing::info!(node_id = %node.id, api = %bound, app_id = %settings.app_id, "peat-sidecar ready");
    systemd::notify("READY=1");
    let liveness = tokio::spawn(crate::liveness::report(
        store.clone(),
        Arc::clone(&node),
        Arc::clone(&health),
        systemd::watchdog_interval(),
        storage_failed,
    ));

    let signalled_node = Arc::clone(&node);
    crate::server::serve(listener, service, async move {
        shutdown.await;
        signalled_node.set_phase(Phase::ShuttingDown);
        systemd::notify("STOPPING=1");
        if let Some(reporter) = watcher_health {
            // Stopped first, so that no later poll marks the watcher serving again.
            reporter.abort();
            let _ = reporter.await;
        }
        health.shutdown();
        let _ = shutdown_tx.send(true);
    })
    .await;

    liveness.abort();
    if let Some(agent_watcher) = agent_watcher {
        agent_watcher.stop().await;
    }
    if let Some(failure) = store.storage_failure() {
        bail!("the document store failed and must be reopened: {failure}");
    }
    store.flush().await.context("flushing the store at shutdown")?;
    tracing::info!("stopped");
    Ok(())
}

fn create_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
            .with_context(|| format!("restricting data directory {}", dir.display()))?;
    }
    Ok(())
}
