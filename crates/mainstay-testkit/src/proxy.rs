//! A TCP proxy between a client and a server that can cut, black-hole or delay traffic.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes both ways.
    Forward,
    /// Close every open connection and refuse new ones (a crashed peer, RST).
    Cut,
    /// Keep connections open but deliver nothing (a partition: packets dropped).
    Blackhole,
}

struct Shared {
    mode: AtomicU8,
    delay_ms: AtomicU64,
    conns: Mutex<Vec<TcpStream>>,
    stopped: AtomicBool,
}

/// A proxy listening on a free loopback port, forwarding to `upstream`.
pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("port", &self.port)
            .finish()
    }
}

fn mode_of(v: u8) -> ProxyMode {
    match v {
        1 => ProxyMode::Cut,
        2 => ProxyMode::Blackhole,
        _ => ProxyMode::Forward,
    }
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(0),
            delay_ms: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let upstream = upstream.to_string();
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if mode_of(s.mode.load(Ordering::SeqCst)) == ProxyMode::Cut {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    let mut conns = s.conns.lock().unwrap_or_else(|p| p.into_inner());
                    conns.push(c2);
                    conns.push(s2);
                }
                pipe(client.try_clone(), server.try_clone(), s.clone());
                pipe(Ok(server), Ok(client), s.clone());
            }
        });
        Ok(TcpProxy { port, shared })
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Switches mode; [`ProxyMode::Cut`] closes every open connection at once.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
        if mode == ProxyMode::Cut {
            for c in self
                .shared
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
            {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// Delays every forwarded chunk by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.set_mode(ProxyMode::Cut);
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pipe(from: std::io::Result<TcpStream>, to: std::io::Result<TcpStream>, s: Arc<Shared>) {
    let (Ok(mut from), Ok(mut to)) = (from, to) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = s.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            match mode_of(s.mode.load(Ordering::SeqCst)) {
                ProxyMode::Forward => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                ProxyMode::Blackhole => continue,
                ProxyMode::Cut => break,
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
