//! The node's long-lived identity: its libp2p key (→ PeerId) and its WebRTC certificate
//! (→ certhash). Both are created on first run and reused after, so the addresses in
//! browsers' caches and in `/.well-known/shoal.json` stay valid across restarts.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use libp2p::identity::Keypair;
use libp2p_webrtc::tokio::Certificate;

use crate::NodeError;

const KEY_FILE: &str = "identity.key";
const CERT_FILE: &str = "webrtc-certificate.pem";

/// Loads the identity from `dir`, creating what is missing.
pub fn load_or_create(dir: &Path) -> Result<(Keypair, Certificate), NodeError> {
    fs::create_dir_all(dir)
        .map_err(|source| NodeError::Io { context: format!("creating data directory {}", dir.display()), source })?;
    let keypair = load_or_create_key(&dir.join(KEY_FILE))?;
    let certificate = load_or_create_certificate(&dir.join(CERT_FILE))?;
    Ok((keypair, certificate))
}

fn load_or_create_key(path: &Path) -> Result<Keypair, NodeError> {
    match fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| NodeError::Identity { path: path.to_owned(), reason: format!("not a libp2p key: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|e| NodeError::Identity { path: path.to_owned(), reason: e.to_string() })?;
            write_private(path, &bytes)?;
            tracing::info!(path = %path.display(), peer_id = %keypair.public().to_peer_id(), "created node identity");
            Ok(keypair)
        }
        Err(source) => Err(NodeError::Io { context: format!("reading {}", path.display()), source }),
    }
}

fn load_or_create_certificate(path: &Path) -> Result<Certificate, NodeError> {
    match fs::read_to_string(path) {
        Ok(pem) => Certificate::from_pem(&pem).map_err(|e| NodeError::Identity {
            path: path.to_owned(),
            reason: format!("not a WebRTC certificate: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let certificate = Certificate::generate(&mut rand_10::rng())
                .map_err(|e| NodeError::Identity { path: path.to_owned(), reason: e.to_string() })?;
            write_private(path, certificate.serialize_pem().as_bytes())?;
            tracing::info!(path = %path.display(), "created WebRTC certificate");
            Ok(certificate)
        }
        Err(source) => Err(NodeError::Io { context: format!("reading {}", path.display()), source }),
    }
}

/// Writes a secret: owner-only permissions, and atomically, so a crash never leaves a
/// half-written key that would change the node's identity on the next start.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let tmp: PathBuf = path.with_extension("tmp");
    let io = |source| NodeError::Io { context: format!("writing {}", path.display()), source };
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (key1, cert1) = load_or_create(dir.path()).unwrap();
        let (key2, cert2) = load_or_create(dir.path()).unwrap();
        assert_eq!(key1.public().to_peer_id(), key2.public().to_peer_id());
        assert_eq!(cert1.fingerprint(), cert2.fingerprint());
    }

    #[test]
    fn corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), b"garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("identity.key") && err.contains("not a libp2p key"), "{err}");
    }
}
