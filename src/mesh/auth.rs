//! Formation authentication: both ends prove they hold the shared key.
//!
//! Each proof is an HMAC-SHA256, keyed with the formation key, over a
//! transcript binding the app id, both node ids and both fresh nonces, with a
//! role label so a listener's proof can never be replayed as a dialer's.
//! The dialer proves first; the listener answers only after verifying it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const NONCE_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Listener,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Dialer => b"dialer",
            Role::Listener => b"listener",
        }
    }
}

/// Everything a proof covers.
pub struct Transcript<'a> {
    pub app_id: &'a str,
    pub dialer_id: &'a str,
    pub dialer_nonce: &'a [u8],
    pub listener_id: &'a str,
    pub listener_nonce: &'a [u8],
}

impl Transcript<'_> {
    fn mac(&self, key: &[u8], role: Role) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
        for part in [
            b"peat-mesh-v1".as_slice(),
            role.label(),
            self.app_id.as_bytes(),
            self.dialer_id.as_bytes(),
            self.dialer_nonce,
            self.listener_id.as_bytes(),
            self.listener_nonce,
        ] {
            // Length-prefixing keeps the concatenation unambiguous.
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    pub fn prove(&self, key: &[u8], role: Role) -> Vec<u8> {
        self.mac(key, role).finalize().into_bytes().to_vec()
    }

    /// Constant-time check of the other side's proof.
    pub fn verify(&self, key: &[u8], role: Role, proof: &[u8]) -> bool {
        self.mac(key, role).verify_slice(proof).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript() -> Transcript<'static> {
        Transcript { app_id: "app", dialer_id: "a", dialer_nonce: &[1; 32], listener_id: "b", listener_nonce: &[2; 32] }
    }

    #[test]
    fn proofs_verify_only_with_the_same_key_and_role() {
        let t = transcript();
        let proof = t.prove(b"key", Role::Dialer);
        assert!(t.verify(b"key", Role::Dialer, &proof));
        assert!(!t.verify(b"other", Role::Dialer, &proof));
        assert!(!t.verify(b"key", Role::Listener, &proof), "roles are not interchangeable");
    }

    #[test]
    fn proofs_bind_the_app_id() {
        let proof = transcript().prove(b"key", Role::Dialer);
        let other = Transcript { app_id: "other", ..transcript() };
        assert!(!other.verify(b"key", Role::Dialer, &proof));
    }
}
