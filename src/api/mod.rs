//! The application API: the `peat.sidecar.v1.PeatSidecar` service.
//!
//! Translates requests into store (and mesh) calls and store errors into
//! Connect/gRPC status codes. Validation happens in the store, so every path
//! into it is checked the same way; this layer only adds request-shape checks.

mod subscription;
pub mod typed;

use std::sync::Arc;

use connectrpc::{ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream};
use tokio::sync::watch;

use crate::mesh::{Mesh, MeshError};
use crate::node::{Node, Phase};
use crate::proto::peat::sidecar::v1::*;
use crate::store::{DocumentStore, StoreError, validate};
use subscription::Subscriptions;
use typed::TypedDocument;

/// The API service; one instance serves every connection.
pub struct Api {
    store: DocumentStore,
    node: Arc<Node>,
    /// `None` when the mesh is disabled (`mesh_listen: disabled` and no peers).
    mesh: Option<Mesh>,
    subscriptions: Arc<Subscriptions>,
}

impl Api {
    /// `shutdown` ends open `Subscribe` streams, so that draining does not
    /// wait on them; `subscribe_backlog_bytes` bounds what their clients may
    /// hold when they read slower than documents change (see `subscription.rs`).
    pub fn new(
        store: DocumentStore,
        node: Arc<Node>,
        mesh: Option<Mesh>,
        shutdown: watch::Receiver<bool>,
        subscribe_backlog_bytes: usize,
    ) -> Self {
        let subscriptions = Subscriptions::new(subscribe_backlog_bytes, shutdown);
        Self { store, node, mesh, subscriptions }
    }

    fn mesh(&self) -> Result<&Mesh, ConnectError> {
        self.mesh.as_ref().ok_or_else(|| {
            ConnectError::failed_precondition("the mesh is disabled on this node (mesh_listen: disabled)")
        })
    }

    async fn put_typed<T: TypedDocument>(&self, message: Option<&T>) -> Result<(), ConnectError> {
        let message = message.ok_or_else(|| ConnectError::invalid_argument(format!("{}: required", T::FIELD)))?;
        validate::doc_id(message.id())
            .map_err(|e| ConnectError::invalid_argument(format!("{}.id: {}", T::FIELD, e.message)))?;
        let content = typed::to_document(message);
        let key = crate::store::DocKey::new(T::COLLECTION, message.id());
        self.store.put_map(key, &content).await.map_err(store_error)?;
        Ok(())
    }

    fn get_typed<T: TypedDocument>(&self) -> Result<Vec<T>, ConnectError> {
        let docs = self.store.list_json(T::COLLECTION).map_err(store_error)?;
        Ok(docs
            .into_iter()
            .filter_map(|(doc_id, json)| match typed::from_document::<T>(&doc_id, &json) {
                Ok(message) => Some(message),
                Err(err) => {
                    tracing::warn!(collection = T::COLLECTION, doc_id, error = %err, "skipping a document that does not parse as its collection's type");
                    None
                }
            })
            .collect())
    }
}

/// Maps store failures onto status codes; internal details are logged, not leaked.
pub fn store_error(err: StoreError) -> ConnectError {
    match err {
        StoreError::Invalid(invalid) => ConnectError::invalid_argument(invalid.to_string()),
        StoreError::NotDurable(e) => ConnectError::unavailable(e.to_string()),
        StoreError::Corrupt { .. } => {
            tracing::error!(error = %err, "corrupt data in the store");
            ConnectError::new(connectrpc::ErrorCode::DataLoss, err.to_string())
        }
        // The disk refused (full, failing): the client may retry later.
        StoreError::Sled(sled::Error::Io(_)) | StoreError::Journal(_) => {
            tracing::error!(error = %err, "the document store's disk failed");
            ConnectError::unavailable(format!("the document store's disk failed: {err}"))
        }
        other => {
            tracing::error!(error = %other, "store failure");
            ConnectError::internal("the document store failed; see the sidecar's log")
        }
    }
}

fn mesh_error(err: MeshError) -> ConnectError {
    match err {
        MeshError::InvalidPeer(message) => ConnectError::invalid_argument(message),
        MeshError::UnknownPeer(id) => ConnectError::not_found(format!("endpoint_id: no known peer {id:?}")),
        MeshError::Persist(message) => ConnectError::internal(message),
    }
}

fn proto_phase(phase: Phase) -> NodePhase {
    match phase {
        Phase::Initializing => NodePhase::NODE_PHASE_INITIALIZING,
        Phase::Ready => NodePhase::NODE_PHASE_READY,
        Phase::Syncing => NodePhase::NODE_PHASE_SYNCING,
        Phase::ShuttingDown => NodePhase::NODE_PHASE_SHUTTING_DOWN,
    }
}

#[allow(refining_impl_trait_internal, refining_impl_trait_reachable)]
impl PeatSidecar for Api {
    async fn get_status(
        &self,
        _ctx: RequestContext,
        _req: ServiceRequest<'_, GetStatusRequest>,
    ) -> ServiceResult<GetStatusResponse> {
        let stats = self.mesh.as_ref().map(Mesh::stats);
        Response::ok(GetStatusResponse {
            node_id: self.node.id.clone(),
            endpoint_addr: self.mesh.as_ref().map(|m| m.endpoint().to_owned()).unwrap_or_default(),
            sync_active: stats.is_some_and(|s| s.active),
            connected_peers: stats.map_or(0, |s| s.connected_peers),
            phase: proto_phase(self.node.phase()).into(),
            ..Default::default()
        })
    }

    async fn connect_peer(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, ConnectPeerRequest>,
    ) -> ServiceResult<ConnectPeerResponse> {
        if !req.relay_url.is_empty() {
            return Err(ConnectError::invalid_argument("relay_url: relays are not supported; give addresses"));
        }
        let addresses: Vec<String> = req.addresses.iter().map(|a| a.to_string()).collect();
        self.mesh()?.connect_peer(req.endpoint_id, &addresses).await.map_err(mesh_error)?;
        Response::ok(ConnectPeerResponse::default())
    }

    async fn disconnect_peer(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, DisconnectPeerRequest>,
    ) -> ServiceResult<DisconnectPeerResponse> {
        self.mesh()?.disconnect_peer(req.endpoint_id).await.map_err(mesh_error)?;
        Response::ok(DisconnectPeerResponse::default())
    }

    async fn list_peers(
        &self,
        _ctx: RequestContext,
        _req: ServiceRequest<'_, ListPeersRequest>,
    ) -> ServiceResult<ListPeersResponse> {
        let peers = self
            .mesh
            .as_ref()
            .map(Mesh::peers)
            .unwrap_or_default()
            .into_iter()
            .map(|p| PeerInfo {
                endpoint_id: p.endpoint_id,
                addresses: p.addresses,
                connected: p.connected,
                ..Default::default()
            })
            .collect();
        Response::ok(ListPeersResponse { peers, ..Default::default() })
    }

    async fn put_document(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, PutDocumentRequest>,
    ) -> ServiceResult<PutDocumentResponse> {
        self.store.put_json(req.collection, req.doc_id, req.json_data).await.map_err(store_error)?;
        Response::ok(PutDocumentResponse::default())
    }

    async fn get_document(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, GetDocumentRequest>,
    ) -> ServiceResult<GetDocumentResponse> {
        let json_data = self.store.get(req.collection, req.doc_id).map_err(store_error)?;
        Response::ok(GetDocumentResponse { json_data, ..Default::default() })
    }

    async fn delete_document(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, DeleteDocumentRequest>,
    ) -> ServiceResult<DeleteDocumentResponse> {
        self.store.delete(req.collection, req.doc_id).await.map_err(store_error)?;
        Response::ok(DeleteDocumentResponse::default())
    }

    async fn list_documents(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, ListDocumentsRequest>,
    ) -> ServiceResult<ListDocumentsResponse> {
        let doc_ids = self.store.list(req.collection).map_err(store_error)?;
        Response::ok(ListDocumentsResponse { doc_ids, ..Default::default() })
    }

    async fn put_platform(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, PutPlatformRequest>,
    ) -> ServiceResult<PutPlatformResponse> {
        let req = req.to_owned_message();
        self.put_typed(req.platform.as_option()).await?;
        Response::ok(PutPlatformResponse::default())
    }

    async fn get_platforms(
        &self,
        _ctx: RequestContext,
        _req: ServiceRequest<'_, GetPlatformsRequest>,
    ) -> ServiceResult<GetPlatformsResponse> {
        Response::ok(GetPlatformsResponse { platforms: self.get_typed()?, ..Default::default() })
    }

    async fn put_cell(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, PutCellRequest>,
    ) -> ServiceResult<PutCellResponse> {
        let req = req.to_owned_message();
        self.put_typed(req.cell.as_option()).await?;
        Response::ok(PutCellResponse::default())
    }

    async fn get_cells(
        &self,
        _ctx: RequestContext,
        _req: ServiceRequest<'_, GetCellsRequest>,
    ) -> ServiceResult<GetCellsResponse> {
        Response::ok(GetCellsResponse { cells: self.get_typed()?, ..Default::default() })
    }

    async fn put_track(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, PutTrackRequest>,
    ) -> ServiceResult<PutTrackResponse> {
        let req = req.to_owned_message();
        self.put_typed(req.track.as_option()).await?;
        Response::ok(PutTrackResponse::default())
    }

    async fn get_tracks(
        &self,
        _ctx: RequestContext,
        _req: ServiceRequest<'_, GetTracksRequest>,
    ) -> ServiceResult<GetTracksResponse> {
        Response::ok(GetTracksResponse { tracks: self.get_typed()?, ..Default::default() })
    }

    async fn put_command(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, PutCommandRequest>,
    ) -> ServiceResult<PutCommandResponse> {
        let req = req.to_owned_message();
        self.put_typed(req.command.as_option()).await?;
        Response::ok(PutCommandResponse::default())
    }

    async fn get_commands(
        &self,
        _ctx: RequestContext,
        _req: ServiceRequest<'_, GetCommandsRequest>,
    ) -> ServiceResult<GetCommandsResponse> {
        Response::ok(GetCommandsResponse { commands: self.get_typed()?, ..Default::default() })
    }

    async fn subscribe(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, SubscribeRequest>,
    ) -> ServiceResult<ServiceStream<DocumentChange>> {
        let mut collections = Vec::new();
        for name in req.collections.iter() {
            validate::collection(name)
                .map_err(|e| ConnectError::invalid_argument(format!("collections: {}", e.message)))?;
            collections.push(name.to_string());
        }
        let feed = self.store.subscribe();
        Response::stream_ok(self.subscriptions.subscribe(feed, collections))
    }

    async fn start_sync(
        &self,
        _ctx: RequestContext,
        _req: ServiceRequest<'_, StartSyncRequest>,
    ) -> ServiceResult<StartSyncResponse> {
        self.mesh()?.start_sync();
        Response::ok(StartSyncResponse::default())
    }

    async fn stop_sync(
        &self,
        _ctx: RequestContext,
        _req: ServiceRequest<'_, StopSyncRequest>,
    ) -> ServiceResult<StopSyncResponse> {
        self.mesh()?.stop_sync();
        Response::ok(StopSyncResponse::default())
    }

    async fn get_sync_stats(
        &self,
        _ctx: RequestContext,
        _req: ServiceRequest<'_, GetSyncStatsRequest>,
    ) -> ServiceResult<GetSyncStatsResponse> {
        let Some(stats) = self.mesh.as_ref().map(Mesh::stats) else {
            return Response::ok(GetSyncStatsResponse::default());
        };
        Response::ok(GetSyncStatsResponse {
            sync_active: stats.active,
            connected_peers: stats.connected_peers,
            bytes_sent: stats.bytes_sent,
            bytes_received: stats.bytes_received,
            ..Default::default()
        })
    }
}
