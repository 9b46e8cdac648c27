//! The [`Topics`] handle and the task that runs a node's topics: it feeds the state the
//! messages of kind [`PayloadKind::Topic`] and its timer, and carries out what the state asks
//! (sends, routes, deliveries to the application).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use super::message::{check_name, topic_key, TopicWire};
use super::tree::{Action, TopicStats, Tree, View};
use super::{TopicError, TopicPlace, TopicsConfig};
use crate::id::{Key, NodeId};
use crate::identity::OriginSigner;
use crate::node::NodeEvent;
use crate::pastry::PeerInfo;

/// Sends and routes in flight at once; more are dropped (and counted), the trees' refreshes
/// and fetches make up for them.
const MAX_PENDING_SENDS: usize = 4096;

/// What the topics layer needs of its node (implemented by the node module, which holds it
/// weakly so that a node handle dropped still stops the node).
pub(crate) trait Port: Send + Sync + 'static {
    /// The next hop for `key` (`Some(None)`: this node is root; `None`: not in an overlay).
    fn next_hop(&self, key: Key) -> Option<Option<PeerInfo>>;
    /// Up to `n` leaf-set members, closest to `key` first.
    fn closest_leaves(&self, key: Key, n: usize) -> Vec<PeerInfo>;
    /// The address of a peer this node knows or has a link to.
    fn address_of(&self, id: NodeId) -> Option<std::net::SocketAddr>;
    /// Routes a topic payload to `key`.
    fn route(
        &self,
        key: Key,
        payload: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;
    /// Sends a topic payload directly; `Err(true)` when the peer is unreachable.
    fn send(
        &self,
        to: PeerInfo,
        payload: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), bool>> + Send>>;
    /// Tells the overlay a peer could not be reached.
    fn link_down(&self, peer: NodeId);
}

struct PortView<'a>(&'a dyn Port);

impl View for PortView<'_> {
    fn next_hop(&self, key: Key) -> Option<Option<PeerInfo>> {
        self.0.next_hop(key)
    }
    fn closest_leaves(&self, key: Key, n: usize) -> Vec<PeerInfo> {
        self.0.closest_leaves(key, n)
    }
    fn address_of(&self, id: NodeId) -> Option<std::net::SocketAddr> {
        self.0.address_of(id)
    }
}

/// A node's topics: subscribe, publish, unsubscribe ([`Node::topics`](crate::node::Node::topics)).
/// Cheap to clone. Messages of subscribed topics arrive among the node's events as
/// [`NodeEvent::Topic`].
#[derive(Clone)]
pub struct Topics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics").finish_non_exhaustive()
    }
}

struct Inner {
    tree: Mutex<Tree>,
    port: Box<dyn Port>,
    sends: Arc<Semaphore>,
    /// Woken when acknowledgements make room for a publisher.
    room: Notify,
    /// Woken when an API call queued deliveries for the task to hand over.
    wake: Notify,
}

/// Starts the topics task of a node: `messages` carries the node's payloads of kind
/// [`PayloadKind::Topic`](crate::wire::PayloadKind::Topic) (and its leaf set's departures),
/// `events` the application's events.
pub(crate) fn spawn(
    port: Box<dyn Port>,
    signer: OriginSigner,
    config: TopicsConfig,
    messages: mpsc::Receiver<NodeEvent>,
    events: mpsc::Sender<NodeEvent>,
) -> Topics {
    let span = tracing::info_span!("topics", id = %signer.node_id());
    let queue = config.delivery_queue;
    let inner = Arc::new(Inner {
        tree: Mutex::new(Tree::new(config, signer, rand::random())),
        port,
        sends: Arc::new(Semaphore::new(MAX_PENDING_SENDS)),
        room: Notify::new(),
        wake: Notify::new(),
    });
    let (deliver, to_deliver) = mpsc::channel(queue);
    tokio::spawn(emit(to_deliver, events).instrument(span.clone()));
    tokio::spawn(run(Arc::downgrade(&inner), messages, deliver).instrument(span));
    Topics { inner }
}

/// Hands topic messages to the application, waiting for room in its events: a slow reader
/// holds up its own deliveries, never the trees this node forwards.
async fn emit(mut to_deliver: mpsc::Receiver<NodeEvent>, events: mpsc::Sender<NodeEvent>) {
    while let Some(event) = to_deliver.recv().await {
        if events.send(event).await.is_err() {
            break;
        }
    }
}

async fn run(
    inner: std::sync::Weak<Inner>,
    mut messages: mpsc::Receiver<NodeEvent>,
    deliver: mpsc::Sender<NodeEvent>,
) {
    let period = match inner.upgrade() {
        Some(inner) => (inner.lock().config.heartbeat / 4).max(Duration::from_millis(10)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = match inner.upgrade() {
            Some(inner) => inner,
            None => break,
        };
        let event = tokio::select! {
            event = messages.recv() => match event {
                Some(event) => Some(event),
                None => break,
            },
            _ = tick.tick() => None,
            () = wake.wake.notified() => None,
        };
        let this = wake;
        match event {
            Some(event) => this.on_event(event),
            None => {
                let now = Instant::now().into_std();
                this.apply(|tree, view| {
                    tree.tick_tree(now, view);
                    tree.tick_flow(now);
                });
            }
        }
        let delivered: Vec<_> = this.lock().delivered.drain(..).collect();
        for msg in delivered {
            if deliver.try_send(NodeEvent::Topic(msg)).is_err() {
                this.lock().stats.dropped += 1;
            }
        }
    }
    debug!("topics task stopped");
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Tree> {
        // Every handler leaves the state consistent between calls.
        self.tree.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state and carries out the actions it queued.
    fn apply<R>(self: &Arc<Self>, f: impl FnOnce(&mut Tree, &dyn View) -> R) -> R {
        let (result, actions) = {
            let mut tree = self.lock();
            let view = PortView(&*self.port);
            let result = f(&mut tree, &view);
            (result, std::mem::take(&mut tree.out))
        };
        self.execute(actions);
        result
    }

    fn on_event(self: &Arc<Self>, event: NodeEvent) {
        let now = Instant::now().into_std();
        match event {
            NodeEvent::Direct { from, payload } => match TopicWire::decode(&payload) {
                Ok(TopicWire::Data { msg }) => self.apply(|t, v| t.on_data(now, from, msg, v)),
                Ok(TopicWire::Replica { topic, msgs, heads }) => {
                    self.apply(|t, _| t.on_replica(now, &topic, msgs, &heads));
                }
                Ok(msg) => self.apply(|t, v| t.on_tree(now, from, msg, v)),
                Err(error) => self.refuse(from, &error),
            },
            NodeEvent::Deliver(delivery) => match TopicWire::decode(&delivery.payload) {
                Ok(msg) => {
                    let acked = matches!(msg, TopicWire::Ack { .. });
                    self.apply(|t, v| t.on_routed(now, delivery.origin, delivery.key, msg, v));
                    if acked {
                        self.room.notify_waiters();
                    }
                }
                Err(error) => self.refuse(delivery.origin, &error),
            },
            NodeEvent::NodeLeft(peer) => self.apply(|t, v| t.peer_gone(now, peer, v)),
            _ => {}
        }
    }

    fn refuse(&self, from: NodeId, error: &str) {
        debug!(%from, %error, "refused a topic message");
        self.lock().stats.refused += 1;
    }

    /// Carries out sends and routes, each on its own task (a slow peer holds up no other).
    fn execute(self: &Arc<Self>, actions: Vec<Action>) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        for action in actions {
            if let Action::Suspect(peer) = action {
                self.port.link_down(peer);
                continue;
            }
            let Ok(permit) = self.sends.clone().try_acquire_owned() else {
                self.lock().stats.sends_dropped += 1;
                continue;
            };
            let this = self.clone();
            let task = async move {
                let _permit = permit;
                match action {
                    Action::Send { to, msg } => {
                        if let Err(unreachable) = this.port.send(to, msg.encode()).await {
                            debug!(peer = %to.id, "topic send failed");
                            if unreachable {
                                this.port.link_down(to.id);
                                let now = Instant::now().into_std();
                                this.apply(|t, v| t.send_failed(now, to.id, v));
                            }
                        }
                    }
                    Action::Route { key, msg } => {
                        if let Err(error) = this.port.route(key, msg.encode()).await {
                            debug!(%key, %error, "topic route failed");
                        }
                    }
                    Action::Suspect(_) => {}
                }
            };
            handles.push(tokio::spawn(task.in_current_span()));
        }
        handles
    }
}

impl Topics {
    /// Subscribes to `name`: its messages arrive among the node's events as
    /// [`NodeEvent::Topic`], starting with those the root still holds. Subscribing again is a
    /// no-op. Works before the node joins: the subscription takes effect once it has.
    pub async fn subscribe(&self, name: &str) -> Result<(), TopicError> {
        check_name(name)?;
        let now = Instant::now().into_std();
        let max = self.inner.lock().config.max_topics;
        if !self.inner.apply(|t, v| t.subscribe(now, name, v)) {
            return Err(TopicError::TooManyTopics { max });
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Stops delivering `name`'s messages; the node leaves the tree unless it forwards for
    /// others.
    pub async fn unsubscribe(&self, name: &str) -> Result<(), TopicError> {
        check_name(name)?;
        let now = Instant::now().into_std();
        self.inner.apply(|t, _| t.unsubscribe(now, name));
        Ok(())
    }

    /// Publishes `payload` on `name`; returns its sequence number. Waits while
    /// [`TopicsConfig::max_in_flight`] messages of this node's wait for the root's
    /// acknowledgement. The message reaches every subscriber (this node too, if it
    /// subscribes), each once, after this node's earlier messages.
    pub async fn publish(&self, name: &str, payload: Vec<u8>) -> Result<u64, TopicError> {
        check_name(name)?;
        let (max_payload, max_topics) = {
            let tree = self.inner.lock();
            (tree.config.max_payload, tree.config.max_topics)
        };
        if payload.len() > max_payload {
            return Err(TopicError::PayloadTooLarge {
                len: payload.len(),
                max: max_payload,
            });
        }
        if self.inner.port.next_hop(topic_key(name)).is_none() {
            return Err(TopicError::NotJoined);
        }
        let mut payload = Some(payload);
        loop {
            let room = self.inner.room.notified();
            let published = self.inner.apply(|t, _| match t.can_publish(name) {
                None => Err(TopicError::TooManyTopics { max: max_topics }),
                Some(false) => Ok(None),
                Some(true) => {
                    let now = Instant::now().into_std();
                    Ok(t.publish(now, name, payload.take().unwrap_or_default()))
                }
            })?;
            if let Some(seq) = published {
                return Ok(seq);
            }
            // An acknowledgement wakes this; the timeout covers one that came just before.
            let _ = tokio::time::timeout(Duration::from_millis(100), room).await;
        }
    }

    /// The highest sequence number up to which the root acknowledged this node's messages on
    /// `name` (0: none yet).
    pub fn accepted(&self, name: &str) -> u64 {
        self.inner.lock().accepted(name)
    }

    /// The topics this node subscribes to, sorted.
    pub fn subscriptions(&self) -> Vec<String> {
        self.inner.lock().subscriptions()
    }

    /// This node's place in `name`'s tree, if it has one.
    pub fn place(&self, name: &str) -> Option<TopicPlace> {
        self.inner.lock().place(name)
    }

    /// Topics this node holds state for.
    pub fn topic_count(&self) -> usize {
        self.inner.lock().len()
    }

    /// The topics' counters.
    pub fn stats(&self) -> TopicStats {
        self.inner.lock().stats
    }

    /// Tells children and parents this node leaves, and hands the windows of the topics it is
    /// root of to the nodes next in line; resolves once the notices are on their way.
    pub(crate) async fn leave(&self) {
        let actions = {
            let mut tree = self.inner.lock();
            tree.leave_all(&PortView(&*self.inner.port));
            std::mem::take(&mut tree.out)
        };
        let handles = self.inner.execute(actions);
        let all = async {
            for handle in handles {
                let _ = handle.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), all).await;
    }
}
