//! The node's origin authenticator: the routing core's [`OriginAuth`] backed by the node's
//! ed25519 identity key, so every routed message this node originates is signed and every
//! origin it delivers (or forwards) was verified.

use crate::id::NodeId;
use crate::identity::{Identity, OriginError, OriginSigner, OriginVerifier};
use crate::pastry::{OriginAuth, OriginProof, ProofError};

/// Signs with the node's key; checks with a cache of decoded origin keys.
#[derive(Debug)]
pub(super) struct KeyAuth {
    signer: OriginSigner,
    verifier: OriginVerifier,
}

impl KeyAuth {
    pub(super) fn new(identity: &Identity) -> Self {
        Self {
            signer: identity.origin_signer(),
            verifier: OriginVerifier::new(),
        }
    }
}

impl OriginAuth for KeyAuth {
    fn sign(&mut self, digest: &[u8; 32]) -> OriginProof {
        OriginProof {
            public_key: self.signer.public_key(),
            signature: self.signer.sign(digest),
        }
    }

    fn verify(
        &mut self,
        origin: NodeId,
        digest: &[u8; 32],
        proof: &OriginProof,
    ) -> Result<(), ProofError> {
        self.verifier
            .verify(origin, &proof.public_key, digest, &proof.signature)
            .map_err(|error| match error {
                OriginError::KeyMismatch => ProofError::KeyMismatch,
                OriginError::BadKey => ProofError::BadKey,
                _ => ProofError::BadSignature,
            })
    }
}
