//! The listener, the connections and shutdown.
//!
//! One accept thread blocks on a std `TcpListener`; each accepted connection is served by its
//! own thread (the `thrift` crate's processors are synchronous, and HBase's own Thrift server
//! is a thread pool of the same shape), up to `max_connections` at once — a connection beyond
//! that is closed at once. The `thrift` crate's `TServer` cannot be stopped, hence this loop.
//!
//! A connection ends when its client closes it, when it stays idle longer than the idle
//! timeout (HBase's 60 s by default), when a read fails (garbage, a frame cut in
//! half, a length over the limits) or when its handler panics (caught; it should not
//! happen): only that connection is closed, every other one goes on. A call refused for a
//! length over the limits (frame, string, container) whose header could be read is first
//! answered with an `IOError` (`DoNotRetryIOException: request refused: …`), so the client
//! learns why instead of seeing a reset. Stopping sets a flag,
//! wakes the accept thread with a connection to itself, shuts every connection's socket down
//! and joins every thread, so that when [`EmulatorHandle::stop`] returns the port and the
//! store file are free again.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hbase_thrift::hbase::{HbaseSyncProcessor, IOError};
use parking_lot::Mutex;
use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol, TStructIdentifier, TType,
};
use thrift::server::TProcessor;

use crate::handler::Handler;
use crate::mutate_rows;
use crate::protocol::{self, WireFormat};
use crate::store::Store;

/// The live connections: their sockets (to shut them down) and threads (to join them).
#[derive(Default)]
struct Connections {
    sockets: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Connections {
    fn active(&self) -> usize {
        self.sockets.lock().len()
    }

    fn reap_finished(&self) {
        let mut threads = self.threads.lock();
        let (done, running): (Vec<_>, Vec<_>) = threads.drain(..).partition(JoinHandle::is_finished);
        *threads = running;
        drop(threads);
        for t in done {
            let _ = t.join();
        }
    }

    fn close_all(&self) {
        for s in self.sockets.lock().values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// A running emulator. Dropping it stops it too.
pub struct EmulatorHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle").field("addr", &self.addr).finish()
    }
}

impl EmulatorHandle {
    /// The address the emulator listens on (with the actual port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection, waits for them and closes the store.
    /// When this returns the port can be bound again and the data dir reopened.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.accept_thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); if this fails the listener is gone already.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(2));
        let _ = thread.join();
        tracing::info!(addr = %self.addr, "hbase emulator stopped");
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where to connect to reach a listener bound to `addr` (unspecified → loopback).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Starts serving `listener` on a background thread.
pub(crate) fn serve(
    listener: TcpListener,
    handler: Handler,
    store: Arc<Store>,
    wire: WireFormat,
    max_connections: usize,
) -> std::io::Result<EmulatorHandle> {
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let processor = Arc::new(HbaseSyncProcessor::new(handler));
    let stop_flag = Arc::clone(&stop);
    let accept_thread = std::thread::Builder::new()
        .name("hbase-emu-accept".into())
        .spawn(move || accept_loop(listener, processor, store, wire, max_connections, stop_flag))?;
    Ok(EmulatorHandle { addr, stop, accept_thread: Some(accept_thread) })
}

fn accept_loop(
    listener: TcpListener,
    processor: Arc<HbaseSyncProcessor<Handler>>,
    store: Arc<Store>,
    wire: WireFormat,
    max_connections: usize,
    stop: Arc<AtomicBool>,
) {
    let conns = Arc::new(Connections::default());
    let next_id = AtomicU64::new(0);
    let mut refused: u64 = 0;
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        conns.reap_finished();
        if conns.active() >= max_connections {
            refused += 1;
            // Logged at 1, 2, 4, 8, … refusals: visible without flooding the log.
            if refused.is_power_of_two() {
                tracing::warn!(max_connections, refused, "connection limit reached; closing new connections");
            }
            continue;
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        conns.sockets.lock().insert(id, registered);
        let processor = Arc::clone(&processor);
        let store = Arc::clone(&store);
        let conns_for_thread = Arc::clone(&conns);
        let spawned = std::thread::Builder::new().name(format!("hbase-emu-conn-{id}")).spawn(move || {
            serve_connection(stream, &processor, &store, wire);
            conns_for_thread.sockets.lock().remove(&id);
        });
        match spawned {
            Ok(thread) => conns.threads.lock().push(thread),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a connection thread");
                if let Some(s) = conns.sockets.lock().remove(&id) {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }
    drop(listener);
    conns.close_all();
}

/// Serves requests on one connection until it closes or fails.
fn serve_connection(stream: TcpStream, processor: &HbaseSyncProcessor<Handler>, store: &Store, wire: WireFormat) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(wire.idle_timeout).is_err() {
        return;
    }
    let Ok(control) = stream.try_clone() else { return };
    let (mut input, mut output) = match protocol::protocols(stream, wire) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(?peer, error = %e, "cannot set up connection");
            return;
        }
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| loop {
        // `mutateRows*` decode into one buffer (`mutate_rows.rs`); the rest is generated code.
        let outcome = match input.read_message_begin() {
            Ok(ident) if mutate_rows::handles(&ident.name) => {
                mutate_rows::process(store, &ident, &mut input, &mut output)
            }
            Ok(ident) => {
                input.replay(ident);
                processor.process(&mut input, &mut output)
            }
            Err(e) => Err(e),
        };
        // A read error of a known call is answered by the processor (muted if refused).
        if let Some((method, seq, why)) = input.refused_call() {
            refuse_call(&control, output.unmuted(), &method, seq, &why);
            return Err(format!("{method} refused: {why}"));
        }
        match outcome {
            Ok(()) if !input.failed() => continue,
            Ok(()) => return Err("malformed request (answered with an exception)".to_string()),
            Err(thrift::Error::Transport(e)) if e.kind == thrift::TransportErrorKind::EndOfFile => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }));
    match outcome {
        Ok(Ok(())) => tracing::trace!(?peer, "connection closed by client"),
        Ok(Err(e)) => tracing::debug!(?peer, error = %e, "connection closed"),
        Err(_) => tracing::error!(?peer, "request handler panicked; connection closed"),
    }
}

/// Most bytes of a refused request read and dropped after answering it, so that the client
/// gets to read the answer (closing a socket with unread input resets the connection).
const DRAIN_AFTER_REFUSAL_BYTES: u64 = 256 * 1024 * 1024;

/// Answers a call that exceeded a limit with an `IOError` (field 1 of every `Hbase` method's
/// result, as in HBase's IDL), then stops reading it: the connection is closed after.
fn refuse_call(control: &TcpStream, output: &mut dyn TOutputProtocol, method: &str, seq: i32, why: &str) {
    let error = IOError {
        message: Some(format!("org.apache.hadoop.hbase.DoNotRetryIOException: request refused: {why}")),
        can_retry: Some(false),
    };
    let written = (|| -> thrift::Result<()> {
        output.write_message_begin(&TMessageIdentifier::new(method, TMessageType::Reply, seq))?;
        output.write_struct_begin(&TStructIdentifier::new("result"))?;
        output.write_field_begin(&TFieldIdentifier::new("io", TType::Struct, 1))?;
        error.write_to_out_protocol(output)?;
        output.write_field_end()?;
        output.write_field_stop()?;
        output.write_struct_end()?;
        output.write_message_end()?;
        output.flush()
    })();
    if written.is_err() {
        return;
    }
    // Read what the client is still sending until it closes, within bounds, so that it
    // receives the answer instead of a reset.
    let _ = control.shutdown(Shutdown::Write);
    let _ = control.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = std::io::copy(&mut std::io::Read::take(control, DRAIN_AFTER_REFUSAL_BYTES), &mut std::io::sink());
}
