//! Test harness: runs real Redis servers and Sentinels (`redis-server`, `redis-cli`
//! and the `openssl` CLI, from Debian's `redis-server` and `openssl` packages) for
//! integration tests. Use it from a test file with `mod redisd;`.
//!
//! ```ignore
//! let master = RedisServer::builder().password("s3cret").start();
//! let replica = RedisServer::builder().replicaof(&master).start();
//! master.cli(&["SET", "k", "v"]);
//! assert!(wait_until(Duration::from_secs(10), || replica.cli(&["GET", "k"]) == "v"));
//! let sentinel = Sentinel::start(&master, "mymaster", 1);
//! assert_eq!(sentinel.master_addr(), Some(master.addr()));
//! ```
//!
//! Every instance listens on 127.0.0.1 only, on a port of its own, and has its own
//! directory under `std::env::temp_dir()` (configuration, log, data, certificates),
//! removed on drop unless `KEEP_REDISD_DIRS` is set. Servers keep nothing on disk
//! (`save ""`, `appendonly no`) and sync replicas at once
//! (`repl-diskless-sync-delay 0`) unless a test asks otherwise with
//! [`Builder::config`]. Dropping an instance stops it (`SHUTDOWN NOSAVE NOW FORCE`,
//! then SIGKILL if it does not exit in time). `REDIS_SERVER` and `REDIS_CLI` name
//! other binaries than the ones on `PATH`.
#![allow(dead_code)]

// Each harness stands alone; a test crate that uses both loads this file twice.
#[allow(clippy::duplicate_mod)]
#[path = "../run/mod.rs"]
mod run;
use run::run_with_timeout;

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// How long `start()` (and `restart_empty()`) waits for the new process to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop()` waits after `SHUTDOWN` before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one `redis-cli` run may take before the harness gives up on it.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Where instances' ports come from. Below Linux's ephemeral range (32768 and up),
/// so that no outgoing connection (a replica or Sentinel reconnecting, say) can hold
/// the port of a server that is down while `restart_empty()` brings it back on it;
/// and below the stand-in harness's ports (20000 and up), so the two never meet.
const PORT_RANGE: Range<u16> = 10000..20000;

/// Ports handed out in this process, never handed out again: two instances started
/// at once (or one restarting) never share one. Other processes are kept off by the
/// test bind in [`free_port`], and by the retry when redis still finds it taken.
static PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `redis-server`, or `REDIS_SERVER` if set.
pub fn redis_server_bin() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

/// `redis-cli`, or `REDIS_CLI` if set.
pub fn redis_cli_bin() -> PathBuf {
    std::env::var_os("REDIS_CLI").map_or_else(|| PathBuf::from("redis-cli"), PathBuf::from)
}

/// Polls `cond` (every 20 ms) until it holds; false if it still does not after
/// `timeout`. `cond` is always asked at least once, and once more after the deadline.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn random_u64() -> u64 {
    // RandomState is seeded per process and stepped per call: enough to spread picks.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_usize(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A port of [`PORT_RANGE`] that nobody in this process was given and that nobody
/// listens on right now (a listener could bind it).
fn free_port() -> u16 {
    let mut taken = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    for _ in 0..1000 {
        let port = PORT_RANGE.start + (random_u64() % span) as u16;
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    panic!("no free port in {PORT_RANGE:?} after 1000 tries");
}

/// `s` as one word of a redis.conf line: bare when that is unambiguous, else in
/// double quotes with the escapes redis's config parser understands.
fn conf_word(s: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || "-_./:@~+*&>=,".contains(c);
    if !s.is_empty() && s.chars().all(bare) {
        return s.to_string();
    }
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\r' => q.push_str("\\r"),
            '\t' => q.push_str("\\t"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn conf_line(conf: &mut String, words: &[&str]) {
    let words: Vec<String> = words.iter().map(|w| conf_word(w)).collect();
    conf.push_str(&words.join(" "));
    conf.push('\n');
}

/// `s` percent-encoded for the user-info part of a URL.
fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// What `redis-cli` needs to reach one instance.
#[derive(Clone, Default)]
struct Access {
    port: u16,
    user: Option<String>,
    password: Option<String>,
    ca_file: Option<PathBuf>,
}

impl Access {
    /// Runs `redis-cli` with `args`. `-e` makes an error reply an exit status (and
    /// puts it on stderr), so that `cli()` can tell a failed command from a reply.
    fn try_cli(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let mut cmd = Command::new(redis_cli_bin());
        cmd.args(["-e", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string());
        if let Some(user) = &self.user {
            cmd.arg("--user").arg(user);
        }
        if let Some(password) = &self.password {
            cmd.arg("--pass").arg(password).arg("--no-auth-warning");
        }
        if let Some(ca) = &self.ca_file {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        cmd.args(args);
        let (status, out, err) = run_with_timeout(cmd, timeout)?;
        if status.success() {
            Ok(out.trim().to_string())
        } else {
            Err(format!("{}{}", err.trim(), out.trim()))
        }
    }
}

/// One redis-server process (plain or `--sentinel`) with its directory; the part
/// servers and Sentinels share.
struct Proc {
    /// "redis-server" or "sentinel": names the files and the messages.
    kind: &'static str,
    root: PathBuf,
    access: Access,
    child: Option<Child>,
    keep: bool,
    /// The log tail was already shown (in a start-up panic): drop need not repeat it.
    reported: bool,
}

impl Proc {
    fn new(kind: &'static str) -> Proc {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let root = std::env::temp_dir().join(format!(
            "redisd-{kind}-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        fs::create_dir_all(root.join("data")).expect("create redisd directory");
        Proc {
            kind,
            root,
            access: Access {
                port: free_port(),
                ..Access::default()
            },
            child: None,
            keep: std::env::var_os("KEEP_REDISD_DIRS").is_some(),
            reported: false,
        }
    }

    fn conf_path(&self) -> PathBuf {
        self.root.join(format!("{}.conf", self.kind))
    }

    fn log_path(&self) -> PathBuf {
        self.root.join(format!("{}.log", self.kind))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// What the process wrote on stdout and stderr (all runs): config file errors,
    /// which come before the log file is open.
    fn output(&self) -> String {
        fs::read_to_string(self.root.join("output.txt")).unwrap_or_default()
    }

    fn label(&self) -> String {
        format!("{} 127.0.0.1:{}", self.kind, self.access.port)
    }

    fn report(&self) -> String {
        format!(
            "--- {} ({}): output ---\n{}\n--- last lines of {} ---\n{}",
            self.label(),
            self.root.display(),
            tail(&self.output(), 20),
            self.log_path().display(),
            tail(&self.log(), 40)
        )
    }

    /// Writes `conf(port)` as the configuration, starts the process and waits until
    /// it answers `INFO` with its own pid (a PONG alone could come from a stranger
    /// that took the port first). If redis finds the port taken, tries again: on a new
    /// port, or on the same one after a pause if `fixed_port`.
    fn spawn(&mut self, conf: &dyn Fn(u16) -> String, extra_args: &[&str], fixed_port: bool) {
        assert!(self.child.is_none(), "{} is already running", self.label());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            fs::write(self.conf_path(), conf(self.access.port)).expect("write redis config");
            let log_start = fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize);
            let output = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.root.join("output.txt"))
                .expect("open output file");
            let mut child = Command::new(redis_server_bin())
                .arg(self.conf_path())
                .args(extra_args)
                .stdin(Stdio::null())
                .stdout(output.try_clone().expect("clone output file"))
                .stderr(output)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {} ({e}); install Debian's redis-server package or set REDIS_SERVER",
                        redis_server_bin().display()
                    )
                });
            let own_pid = format!("process_id:{}", child.id());
            let exited = loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    break Some(status);
                }
                let info = self
                    .access
                    .try_cli(&["INFO", "server"], Duration::from_secs(2));
                if info.is_ok_and(|i| i.lines().any(|l| l.trim() == own_pid)) {
                    self.child = Some(child);
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                thread::sleep(Duration::from_millis(20));
            };
            let fresh_log = self.log().get(log_start..).unwrap_or_default().to_string();
            if exited.is_some()
                && fresh_log.contains("Address already in use")
                && Instant::now() < deadline
            {
                if fixed_port {
                    thread::sleep(Duration::from_millis(100));
                } else {
                    self.access.port = free_port();
                }
                continue;
            }
            self.reported = true;
            match exited {
                Some(status) => panic!(
                    "{} exited during start-up ({status})\n{}",
                    self.label(),
                    self.report()
                ),
                None => panic!(
                    "{} did not answer within {START_TIMEOUT:?}\n{}",
                    self.label(),
                    self.report()
                ),
            }
        }
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `SHUTDOWN NOSAVE NOW FORCE` (NOW: a master does not wait for lagging replicas;
    /// FORCE: exit even if some file cannot be written), then SIGKILL if the process
    /// is still there after STOP_TIMEOUT.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            let deadline = Instant::now() + STOP_TIMEOUT;
            let _ = self
                .access
                .try_cli(&["SHUTDOWN", "NOSAVE", "NOW", "FORCE"], STOP_TIMEOUT);
            loop {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!(
                        "{}: did not stop within {STOP_TIMEOUT:?}, killing it",
                        self.label()
                    );
                    let _ = child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.wait();
    }

    /// SIGKILL, then wait for the process.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if thread::panicking() {
            if !self.reported {
                eprintln!("{}", self.report());
            }
            // A failing test should not wait for a wedged instance.
            self.kill();
        } else {
            self.stop();
        }
        if self.keep {
            eprintln!("{}: keeping {}", self.label(), self.root.display());
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// The throwaway CA and server certificate of a TLS instance, in its `tls/` directory.
#[derive(Clone)]
struct TlsFiles {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    match run_with_timeout(cmd, CLI_TIMEOUT) {
        Ok((status, _, _)) if status.success() => {}
        Ok((_, out, err)) => panic!("openssl {} failed:\n{out}{err}", args.join(" ")),
        Err(e) => panic!("openssl {}: {e}", args.join(" ")),
    }
}

/// Makes a server certificate for 127.0.0.1 and localhost under `root/tls`, signed
/// by a new CA, or by `ca` (certificate, key) when given: a replica signs with its
/// master's CA, so that each trusts the other's certificate through one CA file.
/// P-256 keys, because RSA key generation can take a second on a loaded machine.
fn make_certs(root: &Path, ca: Option<(&Path, &Path)>) -> TlsFiles {
    let dir = root.join("tls");
    fs::create_dir_all(&dir).expect("create tls directory");
    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    match ca {
        Some((cert, key)) => {
            fs::copy(cert, &files.ca_cert).expect("copy the master's CA certificate");
            fs::copy(key, &files.ca_key).expect("copy the master's CA key");
        }
        None => {
            // Our own config file, so that the system's openssl.cnf adds nothing.
            fs::write(
                dir.join("ca.cnf"),
                "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
                 [dn]\nCN = redisd throwaway test CA\n\
                 [v3_ca]\nbasicConstraints = critical,CA:TRUE\n\
                 keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n",
            )
            .expect("write ca.cnf");
            openssl(&dir, &[&["genpkey"][..], &ec, &["-out", "ca.key"]].concat());
            let ca_args = [
                "req", "-new", "-x509", "-key", "ca.key", "-config", "ca.cnf",
            ];
            openssl(
                &dir,
                &[&ca_args[..], &["-days", "7", "-out", "ca.crt"]].concat(),
            );
        }
    }
    fs::write(
        dir.join("server.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = localhost\n\
         [v3_server]\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth,clientAuth\n\
         subjectAltName = IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write server.cnf");
    openssl(
        &dir,
        &[&["genpkey"][..], &ec, &["-out", "server.key"]].concat(),
    );
    let csr = [
        "-key",
        "server.key",
        "-config",
        "server.cnf",
        "-out",
        "server.csr",
    ];
    openssl(&dir, &[&["req", "-new"][..], &csr].concat());
    // Serials need only differ between the certificates one CA signs.
    let serial = (random_u64() >> 1).to_string();
    let sign = [
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
    ];
    let ext = ["-extfile", "server.cnf", "-extensions", "v3_server"];
    let out = ["-set_serial", &serial, "-days", "7", "-out", "server.crt"];
    openssl(&dir, &[&sign[..], &ext, &out].concat());
    files
}

/// What a replica (or Sentinel) needs to know of its master.
#[derive(Clone)]
struct Master {
    port: u16,
    user: Option<(String, String)>,
    password: Option<String>,
    /// CA certificate and key, if the master is TLS.
    tls_ca: Option<(PathBuf, PathBuf)>,
}

impl Master {
    /// The user and password to log in with: the ACL user if there is one.
    fn auth(&self) -> Option<(Option<&str>, &str)> {
        match (&self.user, &self.password) {
            (Some((u, p)), _) => Some((Some(u.as_str()), p.as_str())),
            (None, Some(p)) => Some((None, p.as_str())),
            (None, None) => None,
        }
    }
}

/// Configures one Redis server before it starts.
#[derive(Clone, Default)]
pub struct Builder {
    password: Option<String>,
    user: Option<(String, String)>,
    tls: bool,
    master: Option<Master>,
    config: Vec<String>,
}

impl Builder {
    /// `requirepass`: the password of the `default` user.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self
    }

    /// An ACL user that may do everything (`user NAME on >PASSWORD ~* &* +@all`).
    /// `url()` and `cli()` log in as this user rather than as `default`.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.user = Some((name.to_string(), password.to_string()));
        self
    }

    /// Serve TLS only (`port 0`, `tls-port`), with a throwaway CA and a certificate
    /// for 127.0.0.1 and localhost; clients need no certificate. See
    /// [`RedisServer::ca_file`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Replicate `master` (`replicaof`, with `masterauth`/`masteruser` as it needs).
    /// A replica with no password or user of its own gets its master's, as Sentinel
    /// expects (its `auth-pass` serves a master and its replicas alike). A replica of
    /// a TLS master is TLS too, with a certificate from the master's CA
    /// (`tls-replication yes`).
    pub fn replicaof(mut self, master: &RedisServer) -> Self {
        self.master = Some(master.as_master());
        self
    }

    /// An extra line for the configuration file (after the harness's own, so it
    /// wins), e.g. `"appendonly yes"`.
    pub fn config(mut self, line: &str) -> Self {
        self.config.push(line.to_string());
        self
    }

    /// Creates the directory (and certificates), starts the server and waits until
    /// it answers; panics with the log's last lines if it does not within
    /// START_TIMEOUT.
    pub fn start(mut self) -> RedisServer {
        let mut proc = Proc::new("redis-server");
        let mut master_ca = None;
        if let Some(m) = &self.master {
            if self.password.is_none() && self.user.is_none() {
                self.password = m.password.clone();
                self.user = m.user.clone();
            }
            if let Some((cert, key)) = &m.tls_ca {
                self.tls = true;
                master_ca = Some((cert.clone(), key.clone()));
            }
        }
        let tls = self.tls.then(|| {
            make_certs(
                &proc.root,
                master_ca.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            )
        });
        match (&self.user, &self.password) {
            (Some((u, p)), _) => {
                proc.access.user = Some(u.clone());
                proc.access.password = Some(p.clone());
            }
            (None, p) => proc.access.password = p.clone(),
        }
        proc.access.ca_file = tls.as_ref().map(|t| t.ca_cert.clone());
        let mut server = RedisServer {
            proc,
            settings: self,
            tls,
        };
        server.spawn(false);
        server
    }
}

fn server_conf(b: &Builder, tls: Option<&TlsFiles>, root: &Path, port: u16) -> String {
    let port = port.to_string();
    let path = |p: &Path| p.display().to_string();
    let mut c = String::new();
    conf_line(&mut c, &["bind", "127.0.0.1"]);
    match tls {
        Some(t) => {
            conf_line(&mut c, &["port", "0"]);
            conf_line(&mut c, &["tls-port", &port]);
            conf_line(&mut c, &["tls-cert-file", &path(&t.cert)]);
            conf_line(&mut c, &["tls-key-file", &path(&t.key)]);
            conf_line(&mut c, &["tls-ca-cert-file", &path(&t.ca_cert)]);
            conf_line(&mut c, &["tls-auth-clients", "no"]);
        }
        None => conf_line(&mut c, &["port", &port]),
    }
    conf_line(&mut c, &["daemonize", "no"]);
    conf_line(&mut c, &["dir", &path(&root.join("data"))]);
    conf_line(&mut c, &["logfile", &path(&root.join("redis-server.log"))]);
    conf_line(&mut c, &["save", ""]);
    conf_line(&mut c, &["appendonly", "no"]);
    // A master waits 5 s by default before a full sync, for more replicas to share it.
    conf_line(&mut c, &["repl-diskless-sync-delay", "0"]);
    if let Some(p) = &b.password {
        conf_line(&mut c, &["requirepass", p]);
    }
    if let Some((name, p)) = &b.user {
        let pass = format!(">{p}");
        conf_line(&mut c, &["user", name, "on", &pass, "~*", "&*", "+@all"]);
    }
    if let Some(m) = &b.master {
        conf_line(&mut c, &["replicaof", "127.0.0.1", &m.port.to_string()]);
        match m.auth() {
            Some((Some(user), p)) => {
                conf_line(&mut c, &["masteruser", user]);
                conf_line(&mut c, &["masterauth", p]);
            }
            Some((None, p)) => conf_line(&mut c, &["masterauth", p]),
            None => {}
        }
        if m.tls_ca.is_some() {
            conf_line(&mut c, &["tls-replication", "yes"]);
        }
    }
    for line in &b.config {
        c.push_str(line);
        c.push('\n');
    }
    c
}

/// One running redis-server with its own port and directory.
pub struct RedisServer {
    proc: Proc,
    settings: Builder,
    tls: Option<TlsFiles>,
}

impl RedisServer {
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn as_master(&self) -> Master {
        Master {
            port: self.port(),
            user: self.settings.user.clone(),
            password: self.settings.password.clone(),
            tls_ca: self
                .tls
                .as_ref()
                .map(|t| (t.ca_cert.clone(), t.ca_key.clone())),
        }
    }

    /// Writes the configuration the builder asked for (again: a Sentinel's
    /// `CONFIG REWRITE` is undone) and starts the process.
    fn spawn(&mut self, fixed_port: bool) {
        let settings = self.settings.clone();
        let tls = self.tls.clone();
        let root = self.proc.root.clone();
        let conf = move |port| server_conf(&settings, tls.as_ref(), &root, port);
        self.proc.spawn(&conf, &[], fixed_port);
    }

    /// The port it listens on (the TLS port for a TLS server).
    pub fn port(&self) -> u16 {
        self.proc.access.port
    }

    /// "127.0.0.1:port".
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// `redis://127.0.0.1:port`, `rediss://` for TLS, with `user:password@` (or
    /// `:password@` for the default user), percent-encoded, when it needs a login.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let a = &self.proc.access;
        let login = match (&a.user, &a.password) {
            (Some(u), Some(p)) => format!("{}:{}@", url_encode(u), url_encode(p)),
            (None, Some(p)) => format!(":{}@", url_encode(p)),
            _ => String::new(),
        };
        format!("{scheme}://{login}127.0.0.1:{}", self.port())
    }

    /// The CA certificate (PEM) that signed a TLS server's certificate.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_cert.as_path())
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The ACL user `url()` and `cli()` log in as, if any.
    pub fn user(&self) -> Option<&str> {
        self.proc.access.user.as_deref()
    }

    /// The password `url()` and `cli()` log in with (the ACL user's, if any).
    pub fn password(&self) -> Option<&str> {
        self.proc.access.password.as_deref()
    }

    /// Runs `redis-cli ARGS...` against this server (with its login and TLS flags)
    /// and returns stdout, trimmed. Panics, showing stderr, if the command fails or
    /// the server replies with an error.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("{}: `{}` failed: {e}", self.proc.label(), args.join(" ")))
    }

    /// Like `cli`, but a failure or error reply is an `Err` with what redis-cli said.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        self.proc.access.try_cli(args, CLI_TIMEOUT)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// `SHUTDOWN NOSAVE NOW FORCE`, waiting for the process to exit (SIGKILL after
    /// STOP_TIMEOUT). Nothing happens if it is not running.
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// SIGKILL (a crash, as far as replicas and Sentinels can tell), then wait for it.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Stops the server (if running), throws its data away and starts it again on
    /// the same port with the configuration it was built with (a replica replicates
    /// its master again, even if a Sentinel had promoted it).
    pub fn restart_empty(&mut self) {
        self.proc.stop();
        let data = self.proc.root.join("data");
        let _ = fs::remove_dir_all(&data);
        fs::create_dir_all(&data).expect("create data directory");
        self.spawn(true);
    }

    /// The instance's directory (configuration, log, `data/`, `tls/`).
    pub fn dir(&self) -> &Path {
        &self.proc.root
    }

    /// The log file's path and contents (all runs).
    pub fn log_file(&self) -> PathBuf {
        self.proc.log_path()
    }
    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// One running Redis Sentinel (`redis-server <conf> --sentinel`) watching one master.
pub struct Sentinel {
    proc: Proc,
    master_name: String,
}

impl Sentinel {
    /// Starts a Sentinel on its own port that monitors `master` as `master_name`
    /// with `quorum`, declaring it down after 1 s (`down-after-milliseconds 1000`,
    /// `failover-timeout 5000`: tests need not wait long), logging in to it and its
    /// replicas with the master's user and password. Replicas and other Sentinels
    /// it learns from the master. TLS masters are not supported.
    pub fn start(master: &RedisServer, master_name: &str, quorum: u32) -> Sentinel {
        assert!(
            !master.is_tls(),
            "the redisd harness cannot run a Sentinel for a TLS master"
        );
        let m = master.as_master();
        let name = master_name.to_string();
        let mut proc = Proc::new("sentinel");
        let root = proc.root.clone();
        let conf = move |port: u16| {
            let path = |p: &Path| p.display().to_string();
            let mut c = String::new();
            conf_line(&mut c, &["bind", "127.0.0.1"]);
            conf_line(&mut c, &["port", &port.to_string()]);
            conf_line(&mut c, &["daemonize", "no"]);
            conf_line(&mut c, &["dir", &path(&root.join("data"))]);
            conf_line(&mut c, &["logfile", &path(&root.join("sentinel.log"))]);
            let (mport, quorum) = (m.port.to_string(), quorum.to_string());
            let monitor = ["sentinel", "monitor", &name, "127.0.0.1", &mport, &quorum];
            conf_line(&mut c, &monitor);
            conf_line(
                &mut c,
                &["sentinel", "down-after-milliseconds", &name, "1000"],
            );
            conf_line(&mut c, &["sentinel", "failover-timeout", &name, "5000"]);
            if let Some((user, p)) = m.auth() {
                if let Some(user) = user {
                    conf_line(&mut c, &["sentinel", "auth-user", &name, user]);
                }
                conf_line(&mut c, &["sentinel", "auth-pass", &name, p]);
            }
            c
        };
        proc.spawn(&conf, &["--sentinel"], false);
        Sentinel {
            proc,
            master_name: master_name.to_string(),
        }
    }

    pub fn port(&self) -> u16 {
        self.proc.access.port
    }

    /// "127.0.0.1:port".
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// Runs `redis-cli ARGS...` against the Sentinel; as [`RedisServer::cli`].
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("{}: `{}` failed: {e}", self.proc.label(), args.join(" ")))
    }

    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        self.proc.access.try_cli(args, CLI_TIMEOUT)
    }

    /// The master's address as this Sentinel names it now
    /// (`SENTINEL get-master-addr-by-name`), "ip:port".
    pub fn master_addr(&self) -> Option<String> {
        let out = self.cli(&["SENTINEL", "get-master-addr-by-name", &self.master_name]);
        let mut lines = out.lines().map(str::trim);
        match (lines.next(), lines.next()) {
            (Some(ip), Some(port)) if !ip.is_empty() => Some(format!("{ip}:{port}")),
            _ => None,
        }
    }

    /// Waits until this Sentinel names 127.0.0.1:`port` as the master; false if it
    /// still does not after `timeout`.
    pub fn wait_master(&self, port: u16, timeout: Duration) -> bool {
        let want = format!("127.0.0.1:{port}");
        wait_until(timeout, || {
            self.master_addr().as_deref() == Some(want.as_str())
        })
    }

    /// One field of `SENTINEL MASTER name` (e.g. "flags", "num-slaves",
    /// "num-other-sentinels").
    pub fn master_field(&self, field: &str) -> Option<String> {
        let out = self.cli(&["SENTINEL", "MASTER", &self.master_name]);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        lines
            .chunks(2)
            .find(|kv| kv[0] == field)
            .and_then(|kv| kv.get(1).map(|v| v.to_string()))
    }

    /// Waits until this Sentinel knows at least `replicas` replicas and
    /// `other_sentinels` other Sentinels of its master: before that it cannot fail
    /// over (no replica to promote, or no quorum). False on timeout.
    pub fn wait_discovered(
        &self,
        replicas: usize,
        other_sentinels: usize,
        timeout: Duration,
    ) -> bool {
        let count = |field| {
            self.master_field(field)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        };
        wait_until(timeout, || {
            count("num-slaves") >= replicas && count("num-other-sentinels") >= other_sentinels
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.child.as_ref().map(Child::id)
    }

    /// `SHUTDOWN`, SIGKILL after STOP_TIMEOUT.
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// SIGKILL, then wait for it.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn dir(&self) -> &Path {
        &self.proc.root
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}
