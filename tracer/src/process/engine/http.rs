//! Just enough HTTP/1.1 over a unix socket for an engine's API: GET
//! requests answered with a length or in chunks, and one streamed answer
//! read line by line (Docker's event stream).

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

/// What a request got back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// How long one request may take before the engine counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(10);

fn connect(socket: &Path) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

fn send_get(stream: &mut UnixStream, path: &str, close: bool) -> io::Result<()> {
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: engine\r\nUser-Agent: leaktrace\r\nConnection: {connection}\r\n\r\n"
    )?;
    stream.flush()
}

/// The status and headers (lower-cased names) of an answer.
fn read_head(r: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("not an HTTP answer: {:?}", line.trim_end())))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("the answer ended inside its headers".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, headers));
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads one chunk of a chunked body; `None` at the last (empty) chunk.
fn read_chunk(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let size_hex = line.trim_end().split(';').next().unwrap_or("");
    let size = usize::from_str_radix(size_hex.trim(), 16)
        .map_err(|_| bad(format!("bad chunk size {size_hex:?}")))?;
    let mut data = vec![0; size];
    r.read_exact(&mut data)?;
    let mut crlf = [0u8; 2];
    r.read_exact(&mut crlf)?;
    Ok((size > 0).then_some(data))
}

/// GET `path` and its whole answer.
pub fn get(socket: &Path, path: &str) -> io::Result<Response> {
    let mut stream = connect(socket)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    send_get(&mut stream, path, true)?;
    let mut r = BufReader::new(stream);
    let (status, headers) = read_head(&mut r)?;
    let mut body = Vec::new();
    if header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while let Some(chunk) = read_chunk(&mut r)? {
            body.extend_from_slice(&chunk);
        }
    } else if let Some(len) = header(&headers, "content-length").and_then(|v| v.parse().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response { status, body })
}

/// GET `path`, whose answer never ends: `each` gets every line of it until
/// it returns false or the engine closes the stream.
pub fn stream_lines(
    socket: &Path,
    path: &str,
    mut each: impl FnMut(&str) -> bool,
) -> io::Result<()> {
    let mut stream = connect(socket)?;
    send_get(&mut stream, path, false)?;
    let mut r = BufReader::new(stream);
    let (status, headers) = read_head(&mut r)?;
    if status != 200 {
        return Err(bad(format!("the engine answered {status}")));
    }
    let chunked = header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let mut pending = Vec::new();
    loop {
        let data = if chunked {
            match read_chunk(&mut r)? {
                Some(d) => d,
                None => return Ok(()),
            }
        } else {
            let mut buf = [0u8; 4096];
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf[..n].to_vec()
        };
        pending.extend_from_slice(&data);
        while let Some(at) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if !text.is_empty() && !each(text) {
                return Ok(());
            }
        }
    }
}

/// Percent-encodes a query value (a JSON filter).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies() {
        let mut r = BufReader::new(&b"5\r\nhello\r\n3;x=1\r\n ab\r\n0\r\n\r\n"[..]);
        assert_eq!(
            read_chunk(&mut r).ok().flatten().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            read_chunk(&mut r).ok().flatten().as_deref(),
            Some(&b" ab"[..])
        );
        assert!(matches!(read_chunk(&mut r), Ok(None)));
    }

    #[test]
    fn heads() {
        let mut r = BufReader::new(
            &b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"[..],
        );
        let (status, headers) = read_head(&mut r).expect("head");
        assert_eq!(status, 404);
        assert_eq!(header(&headers, "content-length"), Some("2"));
    }

    #[test]
    fn escapes() {
        assert_eq!(
            query_escape(r#"{"a":["b c"]}"#),
            "%7B%22a%22%3A%5B%22b%20c%22%5D%7D"
        );
    }
}
