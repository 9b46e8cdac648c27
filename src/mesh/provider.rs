//! The provider's side of tunnels: accepting a tunnel to an exposed service, connecting to the
//! service's `HOST:PORT`, or refusing with the stream code that says why.

use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::{debug, warn, Instrument};

use super::message::TUNNEL_ACCEPTED;
use super::{tunnel, Inner};
use crate::id::NodeId;
use crate::transport::RawStream;
use crate::wire::codes::StreamErrorCode;

/// Refuses a tunnel: abandons both directions with `code`, which the opener reads back as the
/// reason (the tunnel codes of [`StreamErrorCode`]).
fn refuse(mut stream: RawStream, code: StreamErrorCode) {
    stream.reset(code);
}

impl Inner {
    fn count_tunnel(&self, service: &str, opened: bool) {
        if let Some(exposed) = self.lock().exposed.get_mut(service) {
            if opened {
                exposed.tunnels += 1;
            } else {
                exposed.target_failures += 1;
            }
        }
    }

    /// A peer opened a tunnel to `service` on this node.
    pub(super) fn on_stream(
        self: &Arc<Self>,
        from: NodeId,
        service: String,
        mut stream: RawStream,
    ) {
        let target = self.lock().exposed.get(&service).map(|e| e.target.clone());
        let Some(target) = target else {
            warn!(%from, service, "tunnel refused: this node does not expose that service");
            refuse(stream, StreamErrorCode::NoSuchService);
            return;
        };
        let Ok(permit) = self.tunnels.clone().try_acquire_owned() else {
            warn!(%from, service, "tunnel refused: serving as many tunnels as allowed");
            self.count_tunnel(&service, false);
            refuse(stream, StreamErrorCode::ProviderBusy);
            return;
        };
        let inner = self.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                let connected = tokio::time::timeout(
                    inner.config.connect_timeout,
                    TcpStream::connect(target.as_str()),
                )
                .await;
                let tcp = match connected {
                    Ok(Ok(tcp)) => tcp,
                    Ok(Err(error)) => {
                        warn!(%from, service, target, %error, "cannot reach the exposed service");
                        inner.count_tunnel(&service, false);
                        refuse(stream, StreamErrorCode::ServiceUnreachable);
                        return;
                    }
                    Err(_) => {
                        warn!(%from, service, target, "the exposed service did not answer in time");
                        inner.count_tunnel(&service, false);
                        refuse(stream, StreamErrorCode::ServiceUnreachable);
                        return;
                    }
                };
                let _ = tcp.set_nodelay(true);
                if let Err(error) = stream.write_all(&[TUNNEL_ACCEPTED]).await {
                    debug!(%from, %error, "tunnel closed before it was accepted");
                    return;
                }
                inner.count_tunnel(&service, true);
                let mut stop = inner.stop.subscribe();
                tokio::select! {
                    result = tunnel::splice(tcp, stream) => match result {
                        Ok(carried) => {
                            debug!(%from, service, up = carried.to_stream,
                                down = carried.to_tcp, "tunnel closed");
                            if let Some(exposed) = inner.lock().exposed.get_mut(&service) {
                                exposed.bytes_sent += carried.to_stream;
                                exposed.bytes_received += carried.to_tcp;
                            }
                        }
                        Err(error) => debug!(%from, service, %error, "tunnel broken"),
                    },
                    _ = stop.wait_for(|stopped| *stopped) => {
                        debug!(%from, service, "tunnel closed: the mesh is shutting down");
                    }
                }
            }
            .in_current_span(),
        );
    }
}
