//! A TCP proxy for fault tests: put it between a client and a server (HBase Thrift, a
//! broker) and make the network misbehave on command.
//!
//! * [`Proxy::hold`] / [`Proxy::release`]: bytes from clients to the server are read and
//!   kept (a request "on the wire" that has not arrived yet) until released, then forwarded
//!   in order — even when the client has closed its end meanwhile, as a delayed segment
//!   would arrive after the sender gave up. [`Proxy::held_bytes`] says how many are held.
//! * [`Proxy::set_latency`]: every chunk, in both directions, is forwarded that much later.
//! * [`Proxy::reset_connections`]: every open connection is reset (RST, `SO_LINGER` 0) on
//!   both sides; held bytes of a reset connection are dropped.
//!
//! It runs on its own threads (two per connection), not on the test's async runtime, so a
//! runtime blocked in place cannot stall it. Dropping the proxy resets its connections and
//! stops accepting. Set-up failures panic (test code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A running proxy; see the module doc.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    upstream: SocketAddr,
    ctl: Mutex<Ctl>,
    /// Notified when `hold` is lifted or connections are reset.
    changed: Condvar,
    stopped: AtomicBool,
}

#[derive(Default)]
struct Ctl {
    hold: bool,
    latency: Duration,
    held_bytes: usize,
    conns: Vec<Arc<Conn>>,
}

/// One proxied connection: both sockets (one descriptor each, closed when the last pump
/// lets go, so a reset's `SO_LINGER` 0 turns the close into an RST).
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    reset: AtomicBool,
    /// Pumps (directions) finished.
    done: std::sync::atomic::AtomicUsize,
}

impl Conn {
    fn kill(&self) {
        self.reset.store(true, Ordering::SeqCst);
        for s in [&self.client, &self.upstream] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            // wakes a pump blocked in read; it sees `reset` and lets go of the sockets
            let _ = s.shutdown(Shutdown::Read);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server: held while `hold` is on.
    Up,
    Down,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`.
    pub fn start(upstream: impl ToSocketAddrs) -> Proxy {
        let upstream = upstream.to_socket_addrs().unwrap().next().expect("an upstream address");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            ctl: Mutex::new(Ctl::default()),
            changed: Condvar::new(),
            stopped: AtomicBool::new(false),
        });
        let s = Arc::clone(&state);
        std::thread::Builder::new().name("proxy-accept".into()).spawn(move || accept(&listener, &s)).unwrap();
        Proxy { addr, state }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Holds bytes from clients to the server (on open and new connections) until
    /// [`Self::release`].
    pub fn hold(&self) {
        self.state.lock().hold = true;
    }

    /// Forwards what was held, in order, and stops holding.
    pub fn release(&self) {
        self.state.lock().hold = false;
        self.state.changed.notify_all();
    }

    /// Bytes read from clients and not forwarded yet because of [`Self::hold`].
    pub fn held_bytes(&self) -> usize {
        self.state.lock().held_bytes
    }

    /// Delays every chunk, both directions, by `latency` (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().latency = latency;
    }

    /// Resets every open connection on both sides; returns how many there were.
    pub fn reset_connections(&self) -> usize {
        let conns = std::mem::take(&mut self.state.lock().conns);
        for c in &conns {
            c.kill();
        }
        self.state.changed.notify_all();
        conns.len()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.state.lock().conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.reset_connections();
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn accept(listener: &TcpListener, state: &Arc<State>) {
    for client in listener.incoming() {
        if state.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(upstream) = TcpStream::connect(state.upstream) else {
            continue; // the server is down: the client sees its connection closed
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let conn = Arc::new(Conn { client, upstream, reset: AtomicBool::new(false), done: Default::default() });
        state.lock().conns.push(Arc::clone(&conn));
        for direction in [Direction::Up, Direction::Down] {
            let (conn, state) = (Arc::clone(&conn), Arc::clone(state));
            std::thread::Builder::new()
                .name("proxy-pump".into())
                .spawn(move || pump(&conn, &state, direction))
                .unwrap();
        }
    }
}

/// Copies one direction of a connection until end of stream, an error or a reset: a reader
/// thread queues what it reads (so it keeps reading while held), this thread forwards.
fn pump(conn: &Arc<Conn>, state: &Arc<State>, direction: Direction) {
    let (from, mut to) = match direction {
        Direction::Up => (&conn.client, &conn.upstream),
        Direction::Down => (&conn.upstream, &conn.client),
    };
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = {
        let (conn, state) = (Arc::clone(conn), Arc::clone(state));
        std::thread::Builder::new()
            .name("proxy-read".into())
            .spawn(move || {
                let mut from = match direction {
                    Direction::Up => &conn.client,
                    Direction::Down => &conn.upstream,
                };
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = from.read(&mut buf).unwrap_or(0);
                    if n == 0 || conn.reset.load(Ordering::SeqCst) {
                        return; // dropping `tx` ends the stream
                    }
                    if direction == Direction::Up {
                        state.lock().held_bytes += n;
                    }
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            })
            .unwrap()
    };
    while let Ok(chunk) = rx.recv() {
        let latency = {
            let mut ctl = state.lock();
            while direction == Direction::Up && ctl.hold && !conn.reset.load(Ordering::SeqCst) {
                ctl = state.changed.wait(ctl).unwrap_or_else(|p| p.into_inner());
            }
            ctl.latency
        };
        if conn.reset.load(Ordering::SeqCst) {
            if direction == Direction::Up {
                state.lock().held_bytes -= chunk.len();
            }
            break;
        }
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        let written = to.write_all(&chunk);
        if direction == Direction::Up {
            state.lock().held_bytes -= chunk.len();
        }
        if written.is_err() {
            let _ = from.shutdown(Shutdown::Read);
            break;
        }
    }
    if direction == Direction::Up {
        // what a reset dropped is no longer held
        let dropped: usize = rx.try_iter().map(|c| c.len()).sum();
        state.lock().held_bytes -= dropped;
    }
    if !conn.reset.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Write); // pass the end of stream on
    }
    let _ = reader.join();
    // both directions done: forget the connection
    if conn.done.fetch_add(1, Ordering::SeqCst) == 1 {
        state.lock().conns.retain(|c| !Arc::ptr_eq(c, conn));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port.
    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut s);
                });
            }
        });
        addr
    }

    fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        s.read_exact(&mut v).unwrap();
        v
    }

    #[test]
    fn held_bytes_arrive_in_order_after_release_and_a_reset_is_seen_by_the_client() {
        let proxy = Proxy::start(echo());
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.write_all(b"one").unwrap();
        assert_eq!(read_exact(&mut c, 3), b"one");

        proxy.hold();
        c.write_all(b"two").unwrap();
        c.write_all(b"three").unwrap();
        while proxy.held_bytes() < 8 {
            std::thread::yield_now();
        }
        c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut b = [0u8; 1];
        assert!(c.read(&mut b).is_err(), "held bytes reached the server");
        c.set_read_timeout(None).unwrap();
        proxy.release();
        assert_eq!(read_exact(&mut c, 8), b"twothree");
        assert_eq!(proxy.held_bytes(), 0);

        assert_eq!(proxy.connections(), 1);
        assert_eq!(proxy.reset_connections(), 1);
        let r = c.read(&mut b);
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
}
