//! Shared helpers of the integration tests (real QUIC on loopback, `wendy` processes).
#![allow(dead_code, unreachable_pub)]

pub mod cluster;
pub mod hostile;
pub mod process;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use wendy::identity::{Certificate, Identity, Validity};
use wendy::transport::{Admission, Limits, Transport, TransportConfig, TransportEvent};

/// Hang guard for waiting on events: generous, never a speed assertion.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Logs the in-process nodes to stderr when `WENDY_TEST_LOG` holds a tracing filter (e.g.
/// `wendy::pastry=debug,wendy::relay=debug`); a no-op otherwise, and after the first call.
pub fn log_from_env() {
    if let Ok(filter) = std::env::var("WENDY_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A config with a fresh identity and a self-signed certificate valid for a year.
pub fn open_config() -> TransportConfig {
    let identity = Identity::generate();
    let certificate = identity
        .self_signed_certificate(Validity::days_from_now(365))
        .unwrap();
    TransportConfig::new(loopback(), identity, certificate, Admission::Open)
}

/// A config whose certificate is `certificate` for `identity`.
pub fn config_with(
    identity: Identity,
    certificate: Certificate,
    admission: Admission,
) -> TransportConfig {
    TransportConfig::new(loopback(), identity, certificate, admission)
}

pub struct Node {
    pub transport: Transport,
    pub events: mpsc::Receiver<TransportEvent>,
}

impl Node {
    pub async fn bind(config: TransportConfig) -> Self {
        let (transport, events) = Transport::bind(config).await.unwrap();
        Self { transport, events }
    }

    pub async fn open() -> Self {
        Self::bind(open_config()).await
    }

    pub async fn with_limits(limits: Limits) -> Self {
        let mut config = open_config();
        config.limits = limits;
        Self::bind(config).await
    }

    pub fn id(&self) -> wendy::id::NodeId {
        self.transport.local_id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// The next event matching `pick`, skipping others (hang-guarded).
    pub async fn next_matching<T>(
        &mut self,
        mut pick: impl FnMut(TransportEvent) -> Option<T>,
    ) -> T {
        tokio::time::timeout(HANG_GUARD, async {
            loop {
                let event = self.events.recv().await.expect("event channel closed");
                if let Some(found) = pick(event) {
                    return found;
                }
            }
        })
        .await
        .expect("hang guard: expected event never came")
    }

    /// Spawns a task that answers every request with `Pong` and forwards the other events.
    pub fn serve(mut self) -> (Transport, mpsc::UnboundedReceiver<TransportEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let transport = self.transport.clone();
        tokio::spawn(async move {
            while let Some(event) = self.events.recv().await {
                match event {
                    TransportEvent::Request { body, reply, .. } => {
                        let nonce = match body {
                            wendy::wire::Body::Ping { nonce } => nonce,
                            _ => 0,
                        };
                        let _ = reply.reply(&wendy::wire::Body::Pong { nonce }).await;
                    }
                    other => {
                        let _ = tx.send(other);
                    }
                }
            }
        });
        (transport, rx)
    }
}

/// Waits for `condition` to hold, polling (hang-guarded).
pub async fn eventually(mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(HANG_GUARD, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("hang guard: condition never held");
}

/// Asserts that a fresh, good peer can still reach `server` and get a message through.
pub async fn assert_good_peer_served(server: &mut Node) {
    let good = Node::open().await;
    let id = good
        .transport
        .connect(server.addr(), Some(server.id()))
        .await
        .unwrap();
    assert_eq!(id, server.id());
    let payload = b"still served".to_vec();
    good.transport
        .send(
            server.id(),
            server.addr(),
            &wendy::wire::Body::Direct {
                payload: payload.clone().into(),
            },
        )
        .await
        .unwrap();
    let from = good.id();
    let got = server
        .next_matching(|event| match event {
            TransportEvent::Message {
                from: f,
                body: wendy::wire::Body::Direct { payload },
                ..
            } if f == from => Some(payload),
            _ => None,
        })
        .await;
    assert_eq!(got, payload);
    good.transport.shutdown().await;
}

/// Writes `bytes` bytes of filler to `stream` in 64 KiB writes (a bulk transfer's payload).
pub async fn write_filler(stream: &mut wendy::transport::RawStream, bytes: usize) {
    let chunk = vec![7u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
}
