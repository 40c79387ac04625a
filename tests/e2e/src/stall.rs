//! A TCP proxy on 127.0.0.1 that a test can stall: it holds every byte (no reset, no close)
//! until released, as a network partition that heals does, or delays each one, as a slow
//! server does. It runs on its own thread, so a test that blocks (kubectl, sleeps) does not
//! stall it by accident.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conditions {
    held: bool,
    latency: Duration,
}

pub struct StallProxy {
    pub addr: SocketAddr,
    conditions: watch::Sender<Conditions>,
    forwarded: Arc<Mutex<u64>>,
}

impl StallProxy {
    /// Listens on 127.0.0.1 (a port the kernel picks) and forwards each connection to
    /// `upstream`.
    pub fn start(upstream: SocketAddr) -> StallProxy {
        let (conditions, watching) = watch::channel(Conditions {
            held: false,
            latency: Duration::ZERO,
        });
        let forwarded = Arc::new(Mutex::new(0));
        let (ready, addr) = std::sync::mpsc::channel();
        let counted = forwarded.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready.send(listener.local_addr().unwrap()).unwrap();
                // Ends when the test drops the proxy (the sender goes).
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            let Ok(server) = TcpStream::connect(upstream).await else { continue };
                            let (cr, cw) = client.into_split();
                            let (sr, sw) = server.into_split();
                            tokio::spawn(pipe(cr, sw, watching.clone(), counted.clone()));
                            tokio::spawn(pipe(sr, cw, watching.clone(), counted.clone()));
                        }
                        _ = closed(watching.clone()) => return,
                    }
                }
            });
        });
        StallProxy {
            addr: addr.recv().unwrap(),
            conditions,
            forwarded,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Holds every byte from now on, both ways, until [`Self::release`].
    pub fn hold(&self) {
        self.conditions.send_modify(|c| c.held = true);
    }

    /// Lets everything held through, in order.
    pub fn release(&self) {
        self.conditions.send_modify(|c| c.held = false);
    }

    /// Delays every byte by `latency` from when it arrived (not one after the other).
    pub fn delay(&self, latency: Duration) {
        self.conditions.send_modify(|c| c.latency = latency);
    }

    /// Bytes forwarded so far, both ways.
    pub fn forwarded(&self) -> u64 {
        *self.forwarded.lock().unwrap()
    }
}

async fn closed(mut watching: watch::Receiver<Conditions>) {
    while watching.changed().await.is_ok() {}
}

/// One direction: a reader stamps each chunk on arrival; the writer sends it once it is due
/// and nothing is held.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut conditions: watch::Receiver<Conditions>,
    forwarded: Arc<Mutex<u64>>,
) {
    let (queue, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if queue.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    while let Some((arrived, chunk)) = queued.recv().await {
        loop {
            let now = *conditions.borrow_and_update();
            let due = arrived + now.latency;
            if !now.held && Instant::now() >= due {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(due), if !now.held => {}
                changed = conditions.changed() => if changed.is_err() { return },
            }
        }
        if to.write_all(&chunk).await.is_err() {
            return;
        }
        *forwarded.lock().unwrap() += chunk.len() as u64;
    }
    // The other end closed: pass the close on once everything before it went through.
    let _ = to.shutdown().await;
}
