//! The page's side of `/shoal/membership/1`: a JSON request, the write side closed, a
//! JSON response read to the end — what the node's `request_response::json` codec
//! speaks, but through the page's own JSON parser (`shoal_webrtc::json`), which keeps
//! `serde_json` out of the wasm.

use std::io;

use futures::{AsyncReadExt, AsyncWriteExt, prelude::*};
use libp2p::StreamProtocol;
use shoal_proto::{MembershipRequest, MembershipResponse};

/// Largest response read: a bounded sample of members with a few addresses each is
/// tens of KB; anything near this is not a node we want to listen to.
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Outbound only: the page asks, the node answers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Codec;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn not_a_server() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "pages do not answer membership requests")
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = MembershipRequest;
    type Response = MembershipResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<MembershipRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(not_a_server())
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<MembershipResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut bytes = Vec::new();
        io.take(MAX_RESPONSE_BYTES + 1).read_to_end(&mut bytes).await?;
        if bytes.len() as u64 > MAX_RESPONSE_BYTES {
            return Err(invalid(format!("membership response over {MAX_RESPONSE_BYTES} bytes")));
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| invalid(e.to_string()))?;
        shoal_webrtc::json::from_str(text).map_err(invalid)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, request: MembershipRequest) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let text = shoal_webrtc::json::to_string(&request).map_err(invalid)?;
        io.write_all(text.as_bytes()).await?;
        io.close().await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, _: &mut T, _: MembershipResponse) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(not_a_server())
    }
}
