//! librdkafka's mock cluster as an embedded Kafka for the demo and the bench: a real
//! Kafka-protocol broker on loopback ports, inside this process. The cluster is not
//! `Send`, so it lives on a thread of its own until dropped.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;

/// A running mock cluster; stopped when dropped.
pub struct EmbeddedKafka {
    /// Its bootstrap servers.
    pub bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// One broker with `topics` (name, partitions) created.
    pub fn start(topics: &[(&str, i32)]) -> Result<Self, KafkaError> {
        let topics: Vec<(String, i32)> = topics.iter().map(|(t, p)| (t.to_string(), *p)).collect();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
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
            let _ = stop_rx.recv();
        });
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| KafkaError::Global(rdkafka::types::RDKafkaErrorCode::Fail))??;
        Ok(EmbeddedKafka {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
