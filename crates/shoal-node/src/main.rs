//! `shoal-node`: see `shoal_node` for what it does and `--help` for its flags.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Default log filter: our own info, and webrtc-rs only when something is wrong (it
/// warns "Unsupported Extension Type" on every Chromium handshake).
const DEFAULT_LOG: &str =
    "info,webrtc=error,webrtc_dtls=error,webrtc_ice=error,webrtc_sctp=error,webrtc_mdns=error,libp2p_webrtc=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)))
        .init();
    let config = shoal_node::Config::parse();
    let node = shoal_node::Node::new(config).await?;
    tracing::info!(peer_id = %node.peer_id(), http = ?node.http_addr(), "node started");
    node.run().await?;
    Ok(())
}
