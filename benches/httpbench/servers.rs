//! The two servers under test, each a child process on 127.0.0.1 stopped by its PID:
//! `kvs serve` on a store in the bench directory, and nginx as minikeyvalue's `volume`
//! script configures it (WebDAV PUT and DELETE, JSON autoindex), on the same disk.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Kvs,
    Nginx,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kvs => "kvs serve",
            Kind::Nginx => "nginx",
        }
    }
}

pub struct Server {
    pub kind: Kind,
    pub addr: String,
    child: Child,
    root: PathBuf,
    nginx: Option<PathBuf>,
    /// kvs serve's `--durability`.
    durability: String,
}

/// The nginx binary, if this machine has one.
pub fn find_nginx() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    /// Starts `kind` on the data in `root` (created if missing); kvs serve with
    /// `--durability durability`.
    pub fn start(
        kind: Kind,
        root: &Path,
        nginx: Option<&Path>,
        durability: &str,
    ) -> Result<Server, String> {
        std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        match kind {
            Kind::Kvs => {
                let mut child = Command::new(env!("CARGO_BIN_EXE_kvs"))
                    .arg("serve")
                    .arg(root.join("store"))
                    .args(["--listen", "127.0.0.1:0", "--durability", durability])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| format!("starting kvs serve: {e}"))?;
                let mut line = String::new();
                BufReader::new(child.stdout.take().expect("piped"))
                    .read_line(&mut line)
                    .map_err(|e| e.to_string())?;
                let addr = line
                    .trim()
                    .strip_prefix("listening on http://")
                    .ok_or_else(|| format!("kvs serve said {line:?}"))?
                    .to_string();
                Ok(Server {
                    kind,
                    addr,
                    child,
                    root: root.to_path_buf(),
                    nginx: None,
                    durability: durability.to_string(),
                })
            }
            Kind::Nginx => {
                let bin = nginx.ok_or("no nginx")?;
                let port = free_port().map_err(|e| e.to_string())?;
                let data = root.join("data");
                let prefix = root.join("nginx");
                for d in [&data, &prefix, &data.join(".body_temp")] {
                    std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
                }
                // SAFETY: geteuid has no preconditions.
                let root_user = unsafe { libc::geteuid() } == 0;
                let conf = format!(
                    "daemon off;\n{user}worker_processes 2;\npid {prefix}/nginx.pid;\n\
                     error_log {prefix}/error.log error;\n\
                     events {{ multi_accept on; accept_mutex off; worker_connections 4096; }}\n\
                     http {{\n  access_log off;\n  sendfile on;\n  sendfile_max_chunk 1024k;\n  \
                     tcp_nopush on;\n  tcp_nodelay on;\n  open_file_cache off;\n  \
                     server_tokens off;\n  default_type application/octet-stream;\n  \
                     server {{\n    listen 127.0.0.1:{port} default_server backlog=4096;\n    \
                     location / {{\n      root {data};\n      \
                     client_body_temp_path {data}/.body_temp;\n      \
                     client_max_body_size 0;\n      dav_methods PUT DELETE;\n      \
                     dav_access group:rw all:r;\n      create_full_put_path on;\n      \
                     autoindex on;\n      autoindex_format json;\n    }}\n  }}\n}}\n",
                    user = if root_user { "user root;\n" } else { "" },
                    prefix = prefix.display(),
                    data = data.display(),
                );
                let conf_path = prefix.join("nginx.conf");
                std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
                let child = Command::new(bin)
                    .arg("-c")
                    .arg(&conf_path)
                    .arg("-p")
                    .arg(&prefix)
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| format!("starting nginx: {e}"))?;
                let addr = format!("127.0.0.1:{port}");
                let deadline = Instant::now() + Duration::from_secs(10);
                while std::net::TcpStream::connect(&addr).is_err() {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "nginx did not listen on {addr}; see {}/error.log",
                            prefix.display()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(Server {
                    kind,
                    addr,
                    child,
                    root: root.to_path_buf(),
                    nginx: Some(bin.to_path_buf()),
                    durability: durability.to_string(),
                })
            }
        }
    }

    /// The server's resident memory in bytes (nginx: its master process only), from
    /// /proc.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib << 10)
    }

    /// CPU seconds (user and system) the server's processes have used so far: kvs serve's
    /// one process, or nginx's master and its workers.
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.child.id();
        let mut pids = vec![pid];
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            pids.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        pids.iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .map(|st| {
                // Fields after the command (which is in parentheses): utime and stime
                // are the 12th and 13th.
                let rest = st.rsplit_once(')').map_or("", |(_, r)| r);
                let f: Vec<&str> = rest.split_whitespace().collect();
                let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                (tick(11) + tick(12)) / hz
            })
            .sum()
    }

    /// SIGTERM (nginx: SIGQUIT, its graceful stop) to the server's PID, and a wait.
    pub fn stop(mut self) {
        let sig = match self.kind {
            Kind::Kvs => libc::SIGTERM,
            Kind::Nginx => libc::SIGQUIT,
        };
        // SAFETY: kill(2) with the PID of our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let _ = self.child.wait();
    }

    /// Stopped and started again on the same data: an empty ring, nothing cached in the
    /// server.
    pub fn restart(mut self) -> Result<Server, String> {
        let (kind, root, nginx) = (self.kind, self.root.clone(), self.nginx.clone());
        let durability = std::mem::take(&mut self.durability);
        self.stop();
        Server::start(kind, &root, nginx.as_deref(), &durability)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes back and drops the page cache (root only), so that the next reads come from the
/// device. Returns whether it could.
pub fn drop_caches() -> bool {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}
