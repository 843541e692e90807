//! The shutdown signal, passed down explicitly (as in mini-redis): whoever runs a
//! loop holds a [`Shutdown`] and checks it between units of work, so work in flight
//! finishes and nothing is cut half-way.

use tokio::sync::watch;

/// Sends the shutdown signal to every [`Shutdown`] made from it.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Listens for the shutdown signal.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and listener.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Send the signal.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Another listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Whether the signal was sent.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// Wait for the signal (returns at once if it was already sent, or if the
    /// trigger is gone).
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}
