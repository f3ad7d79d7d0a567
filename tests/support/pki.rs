//! Test certificates made in-process: a CA, an agent server certificate for
//! `localhost`/127.0.0.1 and a client certificate, written as PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client identity from a CA the agent does not trust.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> Self {
        let (ca_params, ca_key) = ca("agent test CA");
        let issuer = Issuer::new(ca_params.clone(), ca_key);
        let ca_cert = ca_params.self_signed(issuer.key()).unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, issuer: &Issuer<'_, KeyPair>| {
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], ExtendedKeyUsagePurpose::ServerAuth, &issuer);
        let (client_cert, client_key) = leaf(vec!["sidecar".into()], ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        let (rogue_params, rogue_ca_key) = ca("rogue CA");
        let rogue_issuer = Issuer::new(rogue_params, rogue_ca_key);
        let (rogue_cert, rogue_key) = leaf(vec!["sidecar".into()], ExtendedKeyUsagePurpose::ClientAuth, &rogue_issuer);
        Self {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
            rogue_cert: write("rogue.pem", rogue_cert),
            rogue_key: write("rogue-key.pem", rogue_key),
        }
    }

    /// The agent's TLS server configuration; with `require_client_cert`,
    /// only clients with a certificate from the test CA are accepted.
    pub fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_file(&self.ca).unwrap()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let chain = CertificateDer::pem_file_iter(&self.server_cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    (params, KeyPair::generate().unwrap())
}
