//! TLS to the agent: the rustls client configuration built from the
//! `agent_tls_*` settings (ring provider, HTTP/2 via ALPN).
//!
//! `agent_tls_ca` replaces the system trust store when set; `agent_tls_cert`
//! and `agent_tls_key` together enable mTLS. Files are read once, at startup.

use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::RootCertStore;

use crate::config::Settings;
use crate::pem;

/// The client configuration and whether it presents a client certificate.
pub fn client_config(settings: &Settings) -> anyhow::Result<(Arc<rustls::ClientConfig>, bool)> {
    match (&settings.agent_tls_cert, &settings.agent_tls_key) {
        (Some(_), None) => {
            bail!("setting `agent_tls_key` is missing: `agent_tls_cert` is set and needs its private key")
        }
        (None, Some(_)) => {
            bail!("setting `agent_tls_cert` is missing: `agent_tls_key` is set and needs its certificate")
        }
        _ => {}
    }
    let roots = match &settings.agent_tls_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in pem::certificates(path, "agent_tls_ca")? {
                roots.add(cert).with_context(|| format!("setting `agent_tls_ca`: {}", path.display()))?;
            }
            roots
        }
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let (mut config, mutual) = match (&settings.agent_tls_cert, &settings.agent_tls_key) {
        (Some(cert), Some(key)) => {
            let chain = pem::certificates(cert, "agent_tls_cert")?;
            let key = pem::private_key(key, "agent_tls_key")?;
            let config = builder
                .with_client_auth_cert(chain, key)
                .context("settings `agent_tls_cert` and `agent_tls_key` do not form a usable client identity")?;
            (config, true)
        }
        _ => (builder.with_no_client_auth(), false),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), mutual))
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        bail!(
            "`agent_addr` is https:// but no system CA certificates were found; set `agent_tls_ca` to the agent's CA{}",
            found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn https(f: impl FnOnce(&mut Settings)) -> Settings {
        let mut s = Settings { agent_addr: Some("https://127.0.0.1:1".into()), ..Settings::default() };
        f(&mut s);
        s
    }

    fn err(settings: &Settings) -> String {
        format!("{:#}", client_config(settings).expect_err("an error"))
    }

    #[test]
    fn partial_client_identity_names_the_missing_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.pem");
        std::fs::write(&file, "").unwrap();
        let e = err(&https(|s| s.agent_tls_cert = Some(file.clone())));
        assert!(e.contains("`agent_tls_key` is missing"), "{e}");
        let e = err(&https(|s| s.agent_tls_key = Some(file.clone())));
        assert!(e.contains("`agent_tls_cert` is missing"), "{e}");
    }

    #[test]
    fn unreadable_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = err(&https(|s| s.agent_tls_ca = Some(missing.clone())));
        assert!(e.contains("`agent_tls_ca`") && e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let e = err(&https(|s| s.agent_tls_ca = Some(empty.clone())));
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
