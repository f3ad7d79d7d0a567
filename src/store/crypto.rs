//! Encryption at rest: AES-256-GCM over every stored value.
//!
//! Each value is sealed with a fresh random 96-bit nonce (`nonce || ciphertext+tag`).
//! Keys (collection and document ids) stay in the clear so sled can order them.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rand::RngCore;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the key is not valid base64: {0}")]
    NotBase64(#[from] base64::DecodeError),
    #[error("the key must decode to exactly 32 bytes, got {0}")]
    WrongLength(usize),
}

/// Decodes a base64 (standard or URL-safe, padding optional) 32-byte key.
pub fn decode_key(text: &str) -> Result<[u8; 32], KeyError> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let text = text.trim();
    let bytes = STANDARD.decode(text).or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength(bytes.len()))
}

/// A fresh random key, base64-encoded.
pub fn generate_key() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// The at-rest cipher.
pub struct Cipher {
    aead: Aes256Gcm,
}

/// A stored value failed authentication: wrong key or tampered data.
#[derive(Debug, thiserror::Error)]
#[error("stored value failed authentication (wrong encryption key or corrupted data)")]
pub struct OpenError;

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Self { aead: Aes256Gcm::new(key.into()) }
    }

    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .aead
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.aead.decrypt(Nonce::from_slice(nonce), ciphertext).map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key() {
        let a = Cipher::new(&decode_key(&generate_key()).unwrap());
        let b = Cipher::new(&decode_key(&generate_key()).unwrap());
        let sealed = a.seal(b"hello");
        assert_eq!(a.open(&sealed).unwrap(), b"hello");
        assert!(b.open(&sealed).is_err());
        assert_ne!(a.seal(b"hello"), sealed, "nonces are fresh");
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(matches!(decode_key("not base64!"), Err(KeyError::NotBase64(_))));
        assert!(matches!(decode_key("AAAA"), Err(KeyError::WrongLength(3))));
    }
}
