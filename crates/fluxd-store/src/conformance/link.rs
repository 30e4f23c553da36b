//! A network link to a database server that a test can cut and restore, as a server restart
//! does to a real deployment, or pause and resume, as a network partition does: a TCP forwarder
//! on a loopback port.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

#[derive(Default)]
struct Link {
    down: AtomicBool,
    /// No byte passes, either way, on any connection.
    paused: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every forwarded connection, to sever them when the link is cut.
    open: Mutex<Vec<TcpStream>>,
}

impl Link {
    fn sever_all(&self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        for stream in open.drain(..) {
            // Already closed by its peer is fine.
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Forwards connections made to [`FlakyLink::addr`] to a server. While cut, open connections
/// are severed (their reads see the end of the stream, like a server that died) and new ones
/// are closed as soon as they are accepted. While paused, connections stay open but nothing
/// passes (requests and answers wait, as behind a partition that TCP outlasts) until resumed.
pub struct FlakyLink {
    addr: SocketAddr,
    link: Arc<Link>,
}

impl FlakyLink {
    /// Starts forwarding a loopback port to `server`.
    pub fn start(server: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let link = Arc::new(Link::default());
        let accepting = Arc::clone(&link);
        thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = client else { continue };
                if accepting.down.load(Ordering::Acquire) {
                    continue; // dropped: closed at once
                }
                if let Err(err) = forward(&accepting, client, server) {
                    tracing::debug!(%err, "flaky link: could not reach the server");
                }
            }
        });
        Ok(Self { addr, link })
    }

    /// Where clients connect instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link: open connections are severed, new ones closed until [`FlakyLink::restore`].
    pub fn cut(&self) {
        self.link.down.store(true, Ordering::Release);
        self.link.sever_all();
    }

    /// Lets new connections through again.
    pub fn restore(&self) {
        self.link.down.store(false, Ordering::Release);
    }

    /// Pauses the link: connections stay open, but no byte passes until [`FlakyLink::resume`].
    pub fn pause(&self) {
        self.link.paused.store(true, Ordering::Release);
    }

    /// Lets the bytes held by [`FlakyLink::pause`] through, and what follows.
    pub fn resume(&self) {
        self.link.paused.store(false, Ordering::Release);
    }
}

impl Drop for FlakyLink {
    fn drop(&mut self) {
        self.link.stopped.store(true, Ordering::Release);
        self.link.sever_all();
        // Wakes the accepting thread so it sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Connects `client` to `server` with a copying thread each way.
fn forward(link: &Arc<Link>, client: TcpStream, server: SocketAddr) -> io::Result<()> {
    let upstream = TcpStream::connect(server)?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    {
        let mut open = link.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.push(client.try_clone()?);
        open.push(upstream.try_clone()?);
    }
    for (from, to) in [
        (client.try_clone()?, upstream.try_clone()?),
        (upstream, client),
    ] {
        let link = Arc::clone(link);
        thread::spawn(move || copy(&link, from, to));
    }
    Ok(())
}

/// Copies `from` to `to`, holding what it read while the link is paused.
fn copy(link: &Link, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        while link.paused.load(Ordering::Acquire) && !link.stopped.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(10));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // One side ended: end the other, so neither waits on a half-open link.
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
