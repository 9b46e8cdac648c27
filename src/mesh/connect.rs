//! The consumer's side of tunnels: ranking a service's providers, opening a tunnel to the best
//! reachable one with failover, and serving the connections a forward listener accepts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::message::TUNNEL_ACCEPTED;
use super::registry::rank_providers;
use super::{tunnel, Inner, MeshError, ServiceRecord};
use crate::id::NodeId;
use crate::transport::{RawStream, RawStreamError};
use crate::wire::codes::StreamErrorCode;

/// Why one tunnel attempt failed.
struct TunnelFailure {
    /// What went wrong, for the caller's error.
    message: String,
    /// The attempt ran out of time (rather than being refused or failing).
    timed_out: bool,
}

/// What went wrong opening a tunnel to one provider, for logs and errors.
fn describe_refusal(error: RawStreamError) -> String {
    match error {
        RawStreamError::Reset { known, code } => match known {
            Some(StreamErrorCode::NoSuchService) => {
                "the provider does not expose this service".to_owned()
            }
            Some(StreamErrorCode::ServiceUnreachable) => {
                "the provider cannot reach its service".to_owned()
            }
            Some(StreamErrorCode::ProviderBusy) => {
                "the provider serves as many tunnels as it allows".to_owned()
            }
            _ => format!("the provider refused the tunnel (code {code:#x})"),
        },
        RawStreamError::FinishedEarly { .. } => "the provider closed the tunnel".to_owned(),
        other => error_chain(&other),
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Inner {
    /// A tunnel to the best reachable provider of `name`, failing over down the ranking; a
    /// cached provider list that is all unreachable is looked up afresh once.
    pub(super) async fn connect(&self, name: &str) -> Result<RawStream, MeshError> {
        let me = self.node.id();
        let (mut records, mut from_cache) = match self.cached(name) {
            Some(records) => (records, true),
            None => (self.lookup(name).await?, false),
        };
        let mut tried: HashSet<(NodeId, SocketAddr)> = HashSet::new();
        let mut last_error = String::new();
        // `None`: a deadline too far away to represent, i.e. none.
        let deadline = Instant::now().checked_add(self.config.connect_deadline);
        let mut out_of_time = false;
        'rounds: loop {
            let untried = records
                .into_iter()
                .filter(|r| !tried.contains(&(r.provider, r.addr)))
                .collect();
            let ranked = rank_providers(untried, |p| self.node.rtt(p), |p| self.failed_recently(p));
            let candidates = ranked.len();
            for (rank, record) in ranked.into_iter().enumerate() {
                if tried.len() >= self.config.max_tunnel_attempts.max(1) {
                    break;
                }
                let left = deadline.map_or(Duration::MAX, |d| {
                    d.saturating_duration_since(Instant::now())
                });
                if left.is_zero() {
                    out_of_time = true;
                    break 'rounds;
                }
                tried.insert((record.provider, record.addr));
                if record.provider == me {
                    last_error = "the only provider left is this node itself".to_owned();
                    continue;
                }
                // The short, RTT-based wait is for failing over; the one provider there is
                // has nobody to fail over to, so a busy link to it (its queues full of other
                // tunnels' bytes) gets the full timeout.
                let alone = candidates == 1 && rank == 0 && tried.len() == 1;
                let per_provider = if alone {
                    self.config.connect_timeout
                } else {
                    self.tunnel_timeout(record.provider)
                };
                let limit = per_provider.min(left);
                match self.open_tunnel(&record, limit).await {
                    Ok(stream) => {
                        self.lock().failed.remove(&record.provider);
                        return Ok(stream);
                    }
                    Err(error) => {
                        warn!(name, provider = %record.provider, addr = %record.addr,
                            error = %error.message, "provider unreachable; trying the next");
                        self.count_provider_failure(name);
                        // A provider that only ran out of what was left of the deadline is not
                        // known to be unreachable: it keeps its rank and the cached records.
                        let cut_short = error.timed_out && limit < per_provider;
                        if !cut_short {
                            let mut state = self.lock();
                            state.failed.insert(record.provider, Instant::now());
                            state.cache.remove(name);
                        }
                        last_error = error.message;
                    }
                }
            }
            if !from_cache || tried.len() >= self.config.max_tunnel_attempts.max(1) {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                out_of_time = true;
                break;
            }
            from_cache = false;
            records = self.lookup(name).await?;
        }
        if out_of_time {
            let spent = format!(
                "gave up after {:?} (the connect deadline)",
                self.config.connect_deadline
            );
            last_error = if last_error.is_empty() {
                spent
            } else {
                format!("{last_error}; {spent}")
            };
        } else if tried.is_empty() {
            return Err(MeshError::NoProvider(name.to_owned()));
        }
        Err(MeshError::Unreachable {
            name: name.to_owned(),
            tried: tried.len(),
            last_error,
        })
    }

    /// How long a tunnel to `provider` may take to open: a few round trips over the link this
    /// node has to it (a dial, a stream, the provider's connection to its local service) when
    /// its RTT is known, so that a dead provider costs a fraction of a second before the next
    /// is tried; [`MeshConfig::connect_timeout`](super::MeshConfig::connect_timeout) without
    /// an RTT, and never more.
    fn tunnel_timeout(&self, provider: NodeId) -> Duration {
        /// What the provider's connection to its service may add, beyond the round trips.
        const SERVICE_CONNECT: Duration = Duration::from_millis(300);
        match self.node.rtt(provider) {
            Some(rtt) => (rtt.saturating_mul(4) + SERVICE_CONNECT).min(self.config.connect_timeout),
            None => self.config.connect_timeout,
        }
    }

    /// Counts a failed attempt on every forward of `name` (the connection itself may still
    /// succeed through the next provider).
    fn count_provider_failure(&self, name: &str) {
        for forward in self.lock().forwarded.iter_mut().filter(|f| f.name == name) {
            forward.provider_failures += 1;
        }
    }

    /// Opens a tunnel to one provider and waits for its acceptance byte, for at most `limit`.
    async fn open_tunnel(
        &self,
        record: &ServiceRecord,
        limit: Duration,
    ) -> Result<RawStream, TunnelFailure> {
        let open = async {
            let mut stream = self
                .node
                .open_stream_to(record.provider, record.addr, &record.name)
                .await
                .map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            stream
                .read_exact(&mut byte)
                .await
                .map_err(describe_refusal)?;
            if byte[0] == TUNNEL_ACCEPTED {
                Ok(stream)
            } else {
                Err(format!("unexpected tunnel answer {}", byte[0]))
            }
        };
        match tokio::time::timeout(limit, open).await {
            Ok(result) => result.map_err(|message| TunnelFailure {
                message,
                timed_out: false,
            }),
            Err(_) => Err(TunnelFailure {
                message: format!("no tunnel within {limit:?}"),
                timed_out: true,
            }),
        }
    }

    /// One accepted local connection of a forward listener.
    pub(super) async fn serve_local(
        &self,
        tcp: TcpStream,
        client: SocketAddr,
        name: &str,
        index: usize,
    ) {
        let _ = tcp.set_nodelay(true);
        match self.connect(name).await {
            Ok(stream) => {
                if let Some(forward) = self.lock().forwarded.get_mut(index) {
                    forward.connections += 1;
                }
                let mut stop = self.stop.subscribe();
                tokio::select! {
                    result = tunnel::splice(tcp, stream) => match result {
                        Ok(carried) => {
                            debug!(%client, up = carried.to_stream,
                                down = carried.to_tcp, "tunnel closed");
                            if let Some(forward) = self.lock().forwarded.get_mut(index) {
                                forward.bytes_sent += carried.to_stream;
                                forward.bytes_received += carried.to_tcp;
                            }
                        }
                        Err(error) => debug!(%client, %error, "tunnel broken"),
                    },
                    _ = stop.wait_for(|stopped| *stopped) => {
                        debug!(%client, "tunnel closed: the mesh is shutting down");
                    }
                }
            }
            Err(error) => {
                warn!(%client, %error, "closing the forwarded connection");
                if let Some(forward) = self.lock().forwarded.get_mut(index) {
                    forward.failures += 1;
                    forward.last_error = Some(error.to_string());
                }
                tunnel::reset_tcp(tcp);
            }
        }
    }

    pub(super) fn forget_cached_provider(&self, id: NodeId) {
        let mut state = self.lock();
        for (_, records) in state.cache.values_mut() {
            records.retain(|r| r.provider != id);
        }
    }
}
