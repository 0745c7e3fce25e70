//! The live endpoint (`--listen`): the latest report as pprof profiles at
//! `/debug/pprof/heap` and `/debug/pprof/goroutine` (what `go tool pprof
//! URL`, Parca and Grafana Alloy fetch) and as Prometheus metrics at
//! `/metrics`.
//!
//! A plain blocking HTTP/1.0-style server on its own thread: one request
//! per connection, answered from the last published bodies, so a slow or
//! hostile client never holds up the reports.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

/// Why `--listen` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("--listen {0}: not an address (try 127.0.0.1:6060)")]
    BadAddress(String),
    #[error(
        "--listen {0}: not a loopback address; heap stacks of the target would be served to \
         anyone who can reach it (add --listen-public if that is intended)"
    )]
    NotLoopback(String),
    #[error("--listen {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// The bodies the endpoint serves, replaced at every report.
#[derive(Debug, Default, Clone)]
struct Bodies {
    heap: Option<Vec<u8>>,
    goroutine: Option<Vec<u8>>,
    metrics: Option<String>,
}

/// What is served: the run's bodies (one process's, or a container's
/// merged), and with `--container` each process's (`?pid=N`).
#[derive(Debug, Default)]
struct Served {
    all: Bodies,
    by_pid: HashMap<u32, Bodies>,
    /// With --all-containers: each container's processes merged, served
    /// with `?container=NAME`.
    by_container: HashMap<String, Bodies>,
}

/// Handle to publish new bodies.
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<Mutex<Served>>);

impl Shared {
    /// The bodies served without `?pid=`.
    pub fn publish(&self, heap: Vec<u8>, goroutine: Option<Vec<u8>>, metrics: String) {
        if let Ok(mut s) = self.0.lock() {
            s.all = Bodies {
                heap: Some(heap),
                goroutine,
                metrics: Some(metrics),
            };
        }
    }

    /// Process `pid`'s bodies, served with `?pid=N`.
    pub fn publish_process(
        &self,
        pid: u32,
        heap: Vec<u8>,
        goroutine: Option<Vec<u8>>,
        metrics: String,
    ) {
        if let Ok(mut s) = self.0.lock() {
            s.by_pid.insert(
                pid,
                Bodies {
                    heap: Some(heap),
                    goroutine,
                    metrics: Some(metrics),
                },
            );
        }
    }

    /// Container `name`'s processes merged, served with `?container=NAME`.
    pub fn publish_container(&self, name: &str, heap: Vec<u8>, metrics: String) {
        if let Ok(mut s) = self.0.lock() {
            s.by_container.insert(
                name.to_string(),
                Bodies {
                    heap: Some(heap),
                    goroutine: None,
                    metrics: Some(metrics),
                },
            );
        }
    }

    /// Container `name` is no longer traced.
    pub fn forget_container(&self, name: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.by_container.remove(name);
        }
    }

    /// Process `pid` is no longer traced.
    pub fn forget_process(&self, pid: u32) {
        if let Ok(mut s) = self.0.lock() {
            s.by_pid.remove(&pid);
        }
    }
}

/// Parses and binds `addr` (so that a port in use fails before attach).
pub fn bind(addr: &str, public: bool) -> Result<TcpListener, ListenError> {
    let parsed: SocketAddr = addr
        .parse()
        .or_else(|_| {
            // "localhost:6060"
            std::net::ToSocketAddrs::to_socket_addrs(addr)
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(())
        })
        .map_err(|()| ListenError::BadAddress(addr.to_string()))?;
    if !public && !is_loopback(parsed.ip()) {
        return Err(ListenError::NotLoopback(addr.to_string()));
    }
    TcpListener::bind(parsed).map_err(|source| ListenError::Bind {
        addr: addr.to_string(),
        source,
    })
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Serves `listener` on a thread of its own until leaktrace exits.
pub fn serve(listener: TcpListener) -> Shared {
    let shared = Shared::default();
    let bodies = shared.clone();
    std::thread::Builder::new()
        .name("leaktrace-http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream, &bodies);
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| eprintln!("leaktrace: warning: --listen: no server thread: {e}"));
    shared
}

fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Headers are read and ignored (up to the blank line).
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        );
    }
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let pid = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("pid="))
        .map(|v| v.parse::<u32>());
    let container = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("container="))
        .map(percent_decoded);
    let bodies = match shared.0.lock() {
        Ok(served) => match (pid, container) {
            (None, Some(name)) => match served.by_container.get(&name) {
                Some(b) => b.clone(),
                None => {
                    let mut known: Vec<&str> =
                        served.by_container.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    let body =
                        format!("no traced container {name}; traced: {}\n", known.join(", "));
                    drop(served);
                    return respond(&mut stream, "404 Not Found", "text/plain", body.as_bytes());
                }
            },
            (None, None) => served.all.clone(),
            (Some(Ok(pid)), _) => match served.by_pid.get(&pid) {
                Some(b) => b.clone(),
                None => {
                    drop(served);
                    return respond(
                        &mut stream,
                        "404 Not Found",
                        "text/plain",
                        format!("no traced process {pid}\n").as_bytes(),
                    );
                }
            },
            (Some(Err(_)), _) => {
                drop(served);
                return respond(&mut stream, "400 Bad Request", "text/plain", b"pid=N\n");
            }
        },
        Err(_) => return respond(&mut stream, "500 Internal Server Error", "text/plain", b""),
    };
    let not_yet = b"no report yet: the first comes one --interval after attach\n";
    let (status, kind, body): (&str, &str, Vec<u8>) = match path {
        "/debug/pprof/heap" | "/debug/pprof/allocs" => match &bodies.heap {
            Some(b) => ("200 OK", "application/octet-stream", b.clone()),
            None => ("503 Service Unavailable", "text/plain", not_yet.to_vec()),
        },
        "/debug/pprof/goroutine" => match (&bodies.goroutine, &bodies.heap) {
            (Some(b), _) => ("200 OK", "application/octet-stream", b.clone()),
            (None, Some(_)) => (
                "404 Not Found",
                "text/plain",
                b"no goroutine profile: not a Go target (with --container: ?pid=N of a Go process)\n"
                    .to_vec(),
            ),
            (None, None) => ("503 Service Unavailable", "text/plain", not_yet.to_vec()),
        },
        "/metrics" => match &bodies.metrics {
            Some(m) => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                m.clone().into_bytes(),
            ),
            None => ("503 Service Unavailable", "text/plain", not_yet.to_vec()),
        },
        "/" | "/debug/pprof/" => (
            "200 OK",
            "text/plain",
            b"leaktrace: /debug/pprof/heap /debug/pprof/goroutine /metrics\n".to_vec(),
        ),
        _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    };
    let body = if method == "HEAD" { &[][..] } else { &body[..] };
    respond(&mut stream, status, kind, body)
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

/// A query value with its %XX escapes decoded (container names are
/// plain, but a client may escape them).
fn percent_decoded(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_the_extra_flag() {
        assert!(matches!(
            bind("0.0.0.0:0", false),
            Err(ListenError::NotLoopback(_))
        ));
        assert!(matches!(
            bind("nonsense", false),
            Err(ListenError::BadAddress(_))
        ));
        let l = bind("127.0.0.1:0", false).expect("loopback binds");
        let port = l.local_addr().expect("addr").port();
        // The same port again: in use.
        assert!(matches!(
            bind(&format!("127.0.0.1:{port}"), false),
            Err(ListenError::Bind { .. })
        ));
    }
}
