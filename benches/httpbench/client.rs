//! A small HTTP/1.1 client: one keep-alive connection, Content-Length and chunked bodies.
//! Enough for the volume contract's requests and nothing more, so that the load generator
//! costs the same for both servers and adds no dependency.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Client {
    addr: String,
    r: BufReader<TcpStream>,
    w: TcpStream,
}

pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Client {
    pub fn connect(addr: &str) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Client {
            addr: addr.to_string(),
            r: BufReader::with_capacity(256 << 10, s.try_clone()?),
            w: s,
        })
    }

    /// One request; reconnects once if the server closed the kept-alive connection.
    pub fn req(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Resp> {
        match self.try_req(method, path, body) {
            Ok(r) => Ok(r),
            Err(_) => {
                *self = Client::connect(&self.addr)?;
                self.try_req(method, path, body)
            }
        }
    }

    fn try_req(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Resp> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n");
        if let Some(b) = body {
            head += &format!("Content-Length: {}\r\n", b.len());
        }
        head += "\r\n";
        match body {
            // Head and a small body in one write; a large body after the head.
            Some(b) if b.len() <= 16 << 10 => {
                let mut all = head.into_bytes();
                all.extend_from_slice(b);
                self.w.write_all(&all)?;
            }
            Some(b) => {
                self.w.write_all(head.as_bytes())?;
                self.w.write_all(b)?;
            }
            None => self.w.write_all(head.as_bytes())?,
        }
        self.read(method == "HEAD")
    }

    fn read(&mut self, head_only: bool) -> std::io::Result<Resp> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(bad("connection closed"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("status line"))?;
        let (mut len, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((k, v)) = h.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                len = v.parse().map_err(|_| bad("content-length"))?;
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if head_only {
        } else if chunked {
            loop {
                let mut size = String::new();
                self.r.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad("chunk size"))?;
                let at = body.len();
                body.resize(at + n, 0);
                self.r.read_exact(&mut body[at..])?;
                let mut crlf = String::new();
                self.r.read_line(&mut crlf)?;
                if n == 0 {
                    break;
                }
            }
        } else {
            body.resize(len, 0);
            self.r.read_exact(&mut body)?;
        }
        Ok(Resp { status, body })
    }
}
