//! Leaving gracefully: the notices go out and are acknowledged before the links close.

use std::time::Duration;

use tracing::{debug, Instrument};

use super::{batch, Runtime};
use crate::node::links::Links;
use crate::node::NodeError;
use crate::pastry::Transmit;

/// The longest a graceful leave waits for its notices to be acknowledged: a peer that does not
/// answer within it finds out by probing, as for a failure.
const LEAVE_NOTICE_WAIT: Duration = Duration::from_secs(1);

impl<L: Links> Runtime<L> {
    /// Leaves gracefully: tells the peers that hold this node, waits until each notice is
    /// acknowledged (at most [`LEAVE_NOTICE_WAIT`]), and closes the transport, which would
    /// discard whatever QUIC had not delivered yet.
    pub(super) async fn leave(&self) -> Result<(), NodeError> {
        let (transport, notices) = {
            let _runtime = self.tokio.enter();
            let mut driver = self.lock_running()?;
            let now = driver.now();
            driver.pastry.leave(now);
            while let Some(event) = driver.pastry.poll_event() {
                driver.on_core_event(event);
            }
            let mut sends = std::mem::take(&mut driver.deferred);
            while let Some(transmit) = driver.pastry.poll_transmit() {
                if let Transmit::Send { to, msg } = transmit {
                    sends.push((to, msg));
                }
            }
            driver.stopping = true;
            (driver.transport.clone(), batch::frames(sends))
        };
        let mut sending = tokio::task::JoinSet::new();
        for (to, body) in notices {
            let transport = transport.clone();
            sending.spawn(
                async move {
                    if let Err(error) = transport.send_acknowledged(to.id, to.addr, &body).await {
                        debug!(peer = %to.id, %error, "leave notice not acknowledged");
                    }
                }
                .in_current_span(),
            );
        }
        let all_sent = async { while sending.join_next().await.is_some() {} };
        if tokio::time::timeout(LEAVE_NOTICE_WAIT, all_sent)
            .await
            .is_err()
        {
            debug!(
                unacknowledged = sending.len(),
                "closing before every leave notice was acknowledged"
            );
        }
        transport.shutdown().await;
        Ok(())
    }
}
