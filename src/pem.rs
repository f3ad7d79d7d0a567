//! PEM files named by settings (mesh and agent TLS): reading and parsing
//! them, with errors that name the setting and the file.

use std::path::Path;

use anyhow::{Context, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The raw contents of the file `setting` names.
pub fn read(path: &Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("setting `{setting}`: reading {}", path.display()))
}

/// Every certificate in the file; at least one.
pub fn certificates(path: &Path, setting: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read(path, setting)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("setting `{setting}`: {} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        bail!("setting `{setting}`: {} contains no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The first private key in the file.
pub fn private_key(path: &Path, setting: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(&read(path, setting)?)
        .with_context(|| format!("setting `{setting}`: {} contains no PEM private key", path.display()))
}
