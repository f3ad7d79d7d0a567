//! The three agent calls the watcher makes, as the agent's own CLI and UI
//! make them: `GET /status`, and Connect unary calls with the JSON codec
//! (`POST`, `Content-Type: application/json`, body `{}`) to
//! `zarfapi.v1.ZarfAPIService/ListPackages` and
//! `registryapi.v1.RegistryService/ListPulledPackages`.

use bytes::Bytes;
use http_body_util::Full;
use serde::de::DeserializeOwned;

use super::agent_types::{AgentStatus, DeployedPackage, ListPackagesResponse, ListPulledPackagesResponse, Registry};
use super::transport::{AgentConnection, AgentResponse, TransportError};

pub const STATUS_PATH: &str = "/status";
pub const LIST_PACKAGES_PATH: &str = "/zarfapi.v1.ZarfAPIService/ListPackages";
pub const LIST_PULLED_PACKAGES_PATH: &str = "/registryapi.v1.RegistryService/ListPulledPackages";

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The agent could not be reached or did not answer in time.
    #[error("{0}")]
    Unreachable(#[from] TransportError),
    /// The agent answered with an error.
    #[error("the agent answered HTTP {status}{detail}")]
    Rejected { status: http::StatusCode, detail: String },
    /// The agent answered 200 with a body that is not the expected JSON.
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl CallError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CallError::Unreachable(_))
    }
}

/// The agent's API over one connection.
pub struct AgentClient {
    connection: AgentConnection,
}

impl AgentClient {
    pub fn new(connection: AgentConnection) -> Self {
        Self { connection }
    }

    pub async fn status(&mut self) -> Result<AgentStatus, CallError> {
        let request = http::Request::get(self.connection.endpoint().url(STATUS_PATH))
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(TransportError::from)?;
        let response = self.connection.send(request).await?;
        decode(response)
    }

    pub async fn list_packages(&mut self) -> Result<Vec<DeployedPackage>, CallError> {
        let response: ListPackagesResponse = self.connect_unary(LIST_PACKAGES_PATH).await?;
        Ok(response.packages)
    }

    pub async fn list_pulled_packages(&mut self) -> Result<Vec<Registry>, CallError> {
        let response: ListPulledPackagesResponse = self.connect_unary(LIST_PULLED_PACKAGES_PATH).await?;
        Ok(response.registries)
    }

    /// A Connect unary call with an empty request message, JSON codec.
    async fn connect_unary<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, CallError> {
        let request = http::Request::post(self.connection.endpoint().url(path))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("connect-protocol-version", "1")
            .body(Full::new(Bytes::from_static(b"{}")))
            .map_err(TransportError::from)?;
        let response = self.connection.send(request).await?;
        decode(response)
    }
}

/// A 200 response's JSON body, or the error the agent reported.
fn decode<T: DeserializeOwned>(response: AgentResponse) -> Result<T, CallError> {
    if !response.status.is_success() {
        return Err(CallError::Rejected { status: response.status, detail: error_detail(&response) });
    }
    let is_json = response.content_type.as_deref().is_some_and(|t| t.trim_start().starts_with("application/json"));
    if !is_json {
        let found = response.content_type.as_deref().unwrap_or("none");
        return Err(CallError::Malformed(format!("content type is {found}, expected application/json")));
    }
    serde_json::from_slice(&response.body).map_err(|e| CallError::Malformed(e.to_string()))
}

/// The Connect error (`{"code": ..., "message": ...}`) in an error response, if any.
fn error_detail(response: &AgentResponse) -> String {
    #[derive(serde::Deserialize)]
    struct ConnectError {
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<ConnectError>(&response.body) {
        Ok(e) if e.message.is_empty() => format!(" ({})", e.code),
        Ok(e) => format!(" ({}: {})", e.code, e.message),
        Err(_) => String::new(),
    }
}
