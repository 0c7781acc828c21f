//! Test harness: runs stand-in Asterisk processes (`asterisk-stubs/`) for
//! integration tests. Use it from a test file with `mod standin;`.
//!
//! ```ignore
//! let a = StandIn::builder("a")
//!     .eid("02:00:00:00:00:01")
//!     .conf_file("astdb_cluster.conf", "[general]\n...")
//!     .module_path(standin::module_so())
//!     .preload(&["res_astdb_cluster.so"])
//!     .start();
//! assert!(a.cli("module show").contains("res_astdb_cluster.so"));
//! ```
//!
//! Every instance has its own directories under `std::env::temp_dir()`, removed on
//! drop unless `KEEP_STANDIN_DIRS` is set. Dropping an instance stops it
//! (`core stop now`, then SIGKILL if it does not exit in time).
#![allow(dead_code)]

// Each harness stands alone; a test crate that uses both loads this file twice.
#[allow(clippy::duplicate_mod)]
#[path = "../run/mod.rs"]
mod run;
use run::run_with_timeout;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

/// How long `start()` waits for the control socket to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one `-rx` command may take before the harness gives up.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop()` waits after `core stop now` before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

static BUILD: Once = Once::new();
static BUILD_ERROR: Mutex<Option<String>> = Mutex::new(None);
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The `asterisk-stubs/` directory of this crate, or `STANDIN_STUBS_DIR` if set
/// (e.g. a copy built with sanitizers).
pub fn stubs_dir() -> PathBuf {
    match std::env::var_os("STANDIN_STUBS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("asterisk-stubs"),
    }
}

/// Builds the stand-in (once per test binary) and returns the executable's path.
pub fn stub_binary() -> PathBuf {
    BUILD.call_once(|| {
        if let Err(e) = build_stubs() {
            *BUILD_ERROR.lock().unwrap() = Some(e);
        }
    });
    if let Some(e) = BUILD_ERROR.lock().unwrap().as_ref() {
        panic!("building the stand-in Asterisk failed:\n{e}");
    }
    stubs_dir().join("build/asterisk-stub")
}

/// A test-only preload library built with the stand-in:
/// `asterisk-stubs/build/testlibs/<name>.so` (see `Builder::env` for LD_PRELOAD).
#[allow(dead_code)]
pub fn testlib_so(name: &str) -> PathBuf {
    stub_binary();
    let p = stubs_dir()
        .join("build/testlibs")
        .join(format!("{name}.so"));
    assert!(p.is_file(), "test library {} was not built", p.display());
    p
}

/// A test module built with the stand-in: `asterisk-stubs/build/testmods/<name>.so`.
pub fn testmod_so(name: &str) -> PathBuf {
    stub_binary();
    let p = stubs_dir()
        .join("build/testmods")
        .join(format!("{name}.so"));
    assert!(p.is_file(), "test module {} was not built", p.display());
    p
}

fn build_stubs() -> Result<(), String> {
    let dir = stubs_dir();
    fs::create_dir_all(dir.join("build")).map_err(|e| e.to_string())?;
    // Several test binaries (or several engineers) may build at once: serialise on a lock file.
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("build/.lock"))
        .map_err(|e| format!("cannot open build lock: {e}"))?;
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&lock);
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    unsafe {
        libc::flock(fd, libc::LOCK_EX);
    }
    let out = Command::new("nice")
        .arg("make")
        .arg("-C")
        .arg(&dir)
        .arg("-j2")
        .output()
        .map_err(|e| format!("cannot run make: {e}"))?;
    drop(lock);
    if !out.status.success() {
        return Err(format!(
            "make -C {} failed ({}):\n{}\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The module built by cargo for this test run. `cargo test` leaves the fresh
/// cdylib only in `target/<profile>/deps/` (beside the test executable);
/// `target/<profile>/` may hold a stale one from an earlier `cargo build`.
pub fn module_so() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test exe has a directory");
    let profile = deps.parent().expect("deps has a parent");
    let candidates = [
        deps.join("libres_astdb_cluster.so"),
        profile.join("libres_astdb_cluster.so"),
    ];
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "libres_astdb_cluster.so not found (looked at {} and {}); cargo builds the cdylib with the tests",
        candidates[0].display(),
        candidates[1].display()
    );
}

/// The first of ten ports for cluster `slot` (0..=9) of this test process: node N
/// listens on `port_base(slot) + N`. Spread by pid so that test binaries run side by
/// side rarely meet, and below 32768, where Linux takes the local ports of outgoing
/// connections (its ephemeral range): a node's listening port is never one that
/// some connection in flight already holds.
#[allow(dead_code)]
pub fn port_base(slot: u16) -> u16 {
    let pid = std::process::id() as u16;
    20000 + (pid % 120) * 100 + slot * 10
}

/// astdb_cluster.conf for `node` of a cluster on 127.0.0.1: node N listens on
/// `base + N` and every other node in `nodes` is its peer there; `extra`
/// (family presets) is appended.
pub fn cluster_conf(
    cluster: &str,
    secret: &str,
    node: u32,
    nodes: &[u32],
    base: u16,
    extra: &str,
) -> String {
    let mut c = format!(
        "[general]\ncluster_name = {cluster}\ncluster_node = {node}\ncluster_secret = {secret}\n\
         bindaddr = 127.0.0.1\nbindport = {}\n",
        base + node as u16
    );
    for other in nodes.iter().filter(|o| **o != node) {
        c.push_str(&format!(
            "\n[node{other}]\ntype = node\nnode = {other}\nhost = 127.0.0.1:{}\n",
            base + *other as u16
        ));
    }
    c.push_str(extra);
    c
}

/// [`cluster_conf`] whose [general] also holds `general` (option lines).
pub fn cluster_conf_with(
    cluster: &str,
    secret: &str,
    node: u32,
    nodes: &[u32],
    base: u16,
    general: &str,
    extra: &str,
) -> String {
    let mut c = cluster_conf(cluster, secret, node, nodes, base, extra);
    // [general] ends at the first blank line.
    let at = c.find("\n\n").map_or(c.len(), |i| i + 1);
    c.insert_str(at, general);
    c
}

/// Configures one stand-in before it starts.
pub struct Builder {
    name: String,
    eid: Option<String>,
    confs: Vec<(String, String)>,
    preload: Vec<String>,
    modules: Vec<(PathBuf, String)>,
    modules_conf: Option<String>,
    verbose: Option<i32>,
    data_files: Vec<(String, String)>,
    env: Vec<(String, String)>,
}

impl Builder {
    /// An environment variable for the stand-in process (every start of it).
    #[allow(dead_code)]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// `[options] entityid`; the default is unique per instance in this process.
    pub fn eid(mut self, eid: &str) -> Self {
        self.eid = Some(eid.to_string());
        self
    }

    /// A file written into the instance's etc directory before start.
    pub fn conf_file(mut self, name: &str, text: &str) -> Self {
        self.confs.push((name.to_string(), text.to_string()));
        self
    }

    /// Modules listed as `load => name` in modules.conf (loaded at start-up).
    pub fn preload(mut self, names: &[&str]) -> Self {
        self.preload.extend(names.iter().map(|s| s.to_string()));
        self
    }

    /// The module .so copied into the instance's module directory as `res_astdb_cluster.so`.
    pub fn module_path(self, path: impl AsRef<Path>) -> Self {
        self.module_as(path, "res_astdb_cluster.so")
    }

    /// Any .so copied into the module directory under `file_name`.
    pub fn module_as(mut self, path: impl AsRef<Path>, file_name: &str) -> Self {
        self.modules
            .push((path.as_ref().to_path_buf(), file_name.to_string()));
        self
    }

    /// Replaces the generated modules.conf entirely.
    pub fn modules_conf(mut self, text: &str) -> Self {
        self.modules_conf = Some(text.to_string());
        self
    }

    /// A file written under the instance's data directory (e.g.
    /// `documentation/thirdparty/res_astdb_cluster-en_US.xml`).
    pub fn data_file(mut self, rel_path: &str, text: &str) -> Self {
        self.data_files
            .push((rel_path.to_string(), text.to_string()));
        self
    }

    /// `[options] verbose` (ast_verb_sys_level; the stand-in's default is 3).
    pub fn verbose(mut self, level: i32) -> Self {
        self.verbose = Some(level);
        self
    }

    /// Creates the directories and files, starts the process and waits until the
    /// control socket answers.
    pub fn start(self) -> StandIn {
        let bin = stub_binary();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let safe: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(24)
            .collect();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let root = std::env::temp_dir().join(format!(
            "standin-{safe}-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        let dirs = ["etc", "modules", "db", "run", "log", "data", "spool"];
        for d in dirs {
            fs::create_dir_all(root.join(d)).expect("create stand-in directory");
        }
        // The control socket path must fit in sun_path (108 bytes).
        let sock = root.join("run/asterisk.ctl");
        assert!(
            sock.as_os_str().len() < 100,
            "socket path {} too long for a unix socket; use a shorter TMPDIR",
            sock.display()
        );
        let eid = self.eid.clone().unwrap_or_else(|| {
            let pid = std::process::id();
            format!(
                "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                (pid >> 16) & 0xff,
                (pid >> 8) & 0xff,
                pid & 0xff,
                (n >> 8) & 0xff,
                n & 0xff
            )
        });
        let mut conf = String::from("[directories]\n");
        for (key, d) in [
            ("astetcdir", "etc"),
            ("astmoddir", "modules"),
            ("astdbdir", "db"),
            ("astrundir", "run"),
            ("astlogdir", "log"),
            ("astdatadir", "data"),
            ("astspooldir", "spool"),
        ] {
            conf.push_str(&format!("{key} => {}\n", root.join(d).display()));
        }
        conf.push_str(&format!("\n[options]\nentityid = {eid}\n"));
        if let Some(v) = self.verbose {
            conf.push_str(&format!("verbose = {v}\n"));
        }
        let conf_path = root.join("etc/asterisk.conf");
        fs::write(&conf_path, conf).expect("write asterisk.conf");
        let modules_conf = self.modules_conf.clone().unwrap_or_else(|| {
            let mut s = String::from("[modules]\nautoload = no\n");
            for m in &self.preload {
                s.push_str(&format!("load => {m}\n"));
            }
            s
        });
        fs::write(root.join("etc/modules.conf"), modules_conf).expect("write modules.conf");
        for (name, text) in &self.confs {
            fs::write(root.join("etc").join(name), text).expect("write conf file");
        }
        for (rel, text) in &self.data_files {
            let p = root.join("data").join(rel);
            if let Some(dir) = p.parent() {
                fs::create_dir_all(dir).expect("create data subdirectory");
            }
            fs::write(p, text).expect("write data file");
        }
        for (src, name) in &self.modules {
            fs::copy(src, root.join("modules").join(name))
                .unwrap_or_else(|e| panic!("copy module {} into the stand-in: {e}", src.display()));
        }
        let mut s = StandIn {
            name: self.name,
            root,
            conf: conf_path,
            bin,
            child: None,
            eid,
            keep: std::env::var_os("KEEP_STANDIN_DIRS").is_some(),
            env: self.env,
        };
        s.spawn();
        s
    }
}

/// One running stand-in Asterisk process with its own directories.
pub struct StandIn {
    name: String,
    root: PathBuf,
    conf: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    eid: String,
    keep: bool,
    env: Vec<(String, String)>,
}

impl StandIn {
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_string(),
            eid: None,
            confs: Vec::new(),
            preload: Vec::new(),
            modules: Vec::new(),
            modules_conf: None,
            verbose: None,
            data_files: Vec::new(),
            env: Vec::new(),
        }
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "stand-in {} is already running",
            self.name
        );
        let stdout = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("log/stdout.txt"))
            .expect("open stdout file");
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("log/stderr.txt"))
            .expect("open stderr file");
        let child = Command::new(&self.bin)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("-C")
            .arg(&self.conf)
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                panic!(
                    "stand-in {} exited during start-up ({status})\n--- stderr ---\n{}\n--- messages ---\n{}",
                    self.name,
                    self.stderr_text(),
                    self.log()
                );
            }
            // The control socket answers while modules are still loading: tests start
            // once start-up has loaded them, as `core waitfullybooted` says.
            if let Ok(out) = self.try_cli_timeout("core waitfullybooted", Duration::from_secs(5)) {
                if out.contains("fully booted") {
                    return;
                }
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!(
                    "stand-in {} did not answer on its control socket within {:?}\n--- stderr ---\n{}\n--- messages ---\n{}",
                    self.name,
                    START_TIMEOUT,
                    self.stderr_text(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a CLI command through `asterisk-stub -rx` and returns what it printed.
    /// Panics if the instance cannot be reached.
    pub fn cli(&self, cmd: &str) -> String {
        match self.try_cli(cmd) {
            Ok(s) => s,
            Err(e) => panic!("stand-in {}: `{cmd}` failed: {e}", self.name),
        }
    }

    /// Like `cli`, but an unreachable instance is an `Err`.
    pub fn try_cli(&self, cmd: &str) -> Result<String, String> {
        self.try_cli_timeout(cmd, CLI_TIMEOUT)
    }

    fn try_cli_timeout(&self, cmd: &str, timeout: Duration) -> Result<String, String> {
        let mut run = Command::new(&self.bin);
        run.arg("-C").arg(&self.conf).arg("-rx").arg(cmd);
        let (status, out, err) = run_with_timeout(run, timeout)?;
        if status.success() {
            Ok(out)
        } else {
            Err(format!("exit {status}: {err}"))
        }
    }

    /// Polls `cmd` until `pred` accepts its output; returns the last output, or
    /// panics after `timeout` showing it.
    pub fn wait_for_cli(
        &self,
        cmd: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.cli(cmd);
            if pred(&out) {
                return out;
            }
            if Instant::now() > deadline {
                panic!("stand-in {}: `{cmd}` did not reach the expected state within {timeout:?}; last output:\n{out}", self.name);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the messages log contains `needle`; false on timeout.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes (or replaces) a file in the etc directory.
    pub fn write_conf(&self, name: &str, text: &str) {
        fs::write(self.etc_dir().join(name), text).expect("write conf file");
    }

    /// Contents of `<astlogdir>/messages`.
    pub fn log(&self) -> String {
        fs::read_to_string(self.root.join("log/messages")).unwrap_or_default()
    }

    /// What the process wrote on stderr (all runs).
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.root.join("log/stderr.txt")).unwrap_or_default()
    }

    /// The AMI events raised so far (`manager show eventlog`).
    pub fn events(&self) -> String {
        self.cli("manager show eventlog")
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, then wait for the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `core stop now`, waiting for the process to exit (SIGKILL after STOP_TIMEOUT).
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if matches!(c.try_wait(), Ok(None)) {
            let _ = self.try_cli_timeout("core stop now", Duration::from_secs(10));
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => {}
                }
                if Instant::now() > deadline {
                    eprintln!(
                        "stand-in {}: did not stop within {STOP_TIMEOUT:?}, killing it",
                        self.name
                    );
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = c.wait();
    }

    /// Starts the process again with the same directories (stopping it first if running).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn eid(&self) -> &str {
        &self.eid
    }
    pub fn root(&self) -> PathBuf {
        self.root.clone()
    }
    pub fn conf_path(&self) -> PathBuf {
        self.conf.clone()
    }
    pub fn db_dir(&self) -> PathBuf {
        self.root.join("db")
    }
    /// The AstDB file, `<astdbdir>/astdb.sqlite3`.
    pub fn db_file(&self) -> PathBuf {
        self.root.join("db/astdb.sqlite3")
    }
    pub fn etc_dir(&self) -> PathBuf {
        self.root.join("etc")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }
    pub fn mod_dir(&self) -> PathBuf {
        self.root.join("modules")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "--- stand-in {} ({}): last lines of messages ---\n{}",
                self.name,
                self.root.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            // A failing test should not wait long for a wedged instance.
            self.kill9();
        } else {
            self.stop();
        }
        if self.keep {
            eprintln!("stand-in {}: keeping {}", self.name, self.root.display());
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// Every node writes one key at once, five rounds; then waits until all hold the
/// same value, one of the last round's (the concurrent-writes tests of each
/// transport).
#[allow(dead_code)]
pub fn race_one_key_and_wait_for_one_value(nodes: &[StandIn], timeout: Duration) {
    for round in 0..5 {
        let threads: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let conf = n.conf_path();
                let stub = stub_binary();
                thread::spawn(move || {
                    let set = format!("dialplan set DB(blacklist/contended)=round{round}-node{i}");
                    Command::new(stub)
                        .arg("-C")
                        .arg(conf)
                        .arg("-rx")
                        .arg(set)
                        .output()
                        .unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let values: Vec<String> = nodes
            .iter()
            .map(|n| n.cli("database get blacklist contended"))
            .collect();
        if values.iter().all(|v| v == &values[0]) && values[0].contains("round4-") {
            break;
        }
        assert!(Instant::now() < deadline, "no convergence: {values:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `database get family key` on `n` shows `want` (None: not found).
#[allow(dead_code)]
pub fn wait_value_within(
    n: &StandIn,
    family: &str,
    key: &str,
    want: Option<&str>,
    timeout: Duration,
) {
    let cmd = format!("database get {family} {key}");
    n.wait_for_cli(&cmd, timeout, |out| match want {
        Some(v) => out.contains(&format!("Value: {v}")),
        None => out.contains("not found"),
    });
}

/// Waits until every node of `nodes` has every other one up.
#[allow(dead_code)]
pub fn wait_all_peers_up(nodes: &[StandIn], timeout: Duration) {
    let peers = nodes.len() - 1;
    for n in nodes {
        n.wait_for_cli("astdb cluster show status", timeout, |s| {
            s.contains(&format!("{peers} of {peers} peers up"))
        });
    }
}
