//! librdkafka's mock cluster as an embedded Kafka for the demo, the bench and the
//! tests: a real Kafka-protocol broker on a loopback port, inside this process. The
//! cluster is not `Send`, so it lives on a thread of its own until dropped, and what
//! is asked of it (broker down and up, a new topic) goes there and waits for the
//! answer.
//!
//! Taking the broker down closes its connections and refuses new ones; it keeps its
//! port bound meanwhile (librdkafka binds it again at once), and no server started
//! on a port from [`free_port`](crate::tools::ports::free_port) can take it, so it
//! can listen there again when brought back up.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaErrorCode;

/// What the cluster's thread is asked to do.
enum Op {
    BrokersDown,
    BrokersUp,
    CreateTopic(String, i32),
}

type Reply = mpsc::Sender<Result<(), KafkaError>>;

/// A running mock cluster; stopped when dropped.
pub struct EmbeddedKafka {
    /// Its bootstrap servers.
    pub bootstrap: String,
    ops: Option<mpsc::Sender<(Op, Reply)>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// One broker with `topics` (name, partitions) created.
    pub fn start(topics: &[(&str, i32)]) -> Result<Self, KafkaError> {
        let topics: Vec<(String, i32)> = topics.iter().map(|(t, p)| (t.to_string(), *p)).collect();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ops_tx, ops_rx) = mpsc::channel::<(Op, Reply)>();
        let thread = std::thread::spawn(move || {
            let cluster = match MockCluster::new(1) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for (t, p) in &topics {
                if let Err(e) = cluster.create_topic(t, *p, 1) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
            // Until the sender is dropped (with the EmbeddedKafka).
            for (op, reply) in ops_rx {
                let done = match op {
                    Op::BrokersDown => cluster.broker_down(-1),
                    Op::BrokersUp => cluster.broker_up(-1),
                    Op::CreateTopic(t, p) => cluster.create_topic(&t, p, 1),
                };
                let _ = reply.send(done);
            }
        });
        let bootstrap = ready_rx.recv().map_err(|_| gone())??;
        Ok(EmbeddedKafka {
            bootstrap,
            ops: Some(ops_tx),
            thread: Some(thread),
        })
    }

    fn ask(&self, op: Op) -> Result<(), KafkaError> {
        let (tx, rx) = mpsc::channel();
        let ops = self.ops.as_ref().ok_or_else(gone)?;
        ops.send((op, tx)).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }

    /// Take every broker down: connections are closed and new ones refused, as in a
    /// Kafka outage, until [`brokers_up`](Self::brokers_up).
    pub fn brokers_down(&self) -> Result<(), KafkaError> {
        self.ask(Op::BrokersDown)
    }

    /// Bring every broker back: it accepts connections on its port again.
    pub fn brokers_up(&self) -> Result<(), KafkaError> {
        self.ask(Op::BrokersUp)
    }

    /// Create `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), KafkaError> {
        self.ask(Op::CreateTopic(topic.to_owned(), partitions))
    }
}

/// The cluster's thread ended (it could not start, or it panicked).
fn gone() -> KafkaError {
    KafkaError::MockCluster(RDKafkaErrorCode::Fail)
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.ops.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
