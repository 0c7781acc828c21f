//! End-to-end cluster figures: stand-in Asterisk processes (`asterisk-stubs/`) with
//! the release-built module, on loopback. Prints figures beside their targets;
//! asserts no timing.
//!
//! Run: `cargo bench --bench cluster`. Sizes come from the environment:
//!
//! | variable | default | figure |
//! |---|---|---|
//! | `BENCH_FIGURES` | `1,2,3,4,5,6,7,8` | which figures to run |
//! | `BENCH_UPDATES` | 100000 | 1: keys written per path |
//! | `BENCH_UPDATE_PATHS` | `cli,dialplan,events` | 1: which writer paths (`events`: the dialplan path with change events off, on, and one per key) |
//! | `BENCH_REPEAT` | 3 | 1: runs per path (the median is the figure) |
//! | `BENCH_SAMPLES` | 200 | 2: latency samples |
//! | `BENCH_NEW_NODE_KEYS` | 1000000 | 3: keys a new node receives |
//! | `BENCH_NEW_NODE_VALUE` | (none: `v<i>`) | 3 and 7: one value for every key the new node receives (no spaces) |
//! | `BENCH_HEAL_KEYS` | 100000 | 4: family size |
//! | `BENCH_HEAL_DIFF` | 10 | 4: keys changed during the split |
//! | `BENCH_COST_WRITES` | 50000 | 5: DB() writes per timed loop |
//! | `BENCH_COST_ROUNDS` | 7 | 5: loops per family |
//! | `BENCH_CAPTURE_SAMPLES` | 60 | 6: CLI / AMI writes timed to the peer |
//! | `BENCH_REDIS_SETS` | 1000000 | 7: SETs redis-benchmark sends a primary (the reference) |
//! | `BENCH_REDIS_CLUSTERS` | `mesh:3,redis:3,redis:8` | 7: the clusters compared, transport:nodes (`mesh`, `redis` or `pjsip`) |
//! | `BENCH_REDIS_UPDATES` | 100000 | 7: keys written per updates run |
//! | `BENCH_REDIS_REPEAT` | 1 | 7: updates runs per cluster (the median is the figure) |
//! | `BENCH_REDIS_SAMPLES` | 100 | 7: latency samples per cluster |
//! | `BENCH_REDIS_NEW_NODE_KEYS` | 1000000 | 7: keys a new node receives |
//! | `BENCH_PJSIP_CLUSTERS` | `mesh:3,pjsip:3` | 8: the clusters compared, transport:nodes (as in 7) |
//! | `BENCH_PJSIP_UPDATES` | 100000 | 8: keys written per updates run |
//! | `BENCH_PJSIP_REPEAT` | 3 | 8: updates runs per cluster (the median is the figure) |
//! | `BENCH_PJSIP_SAMPLES` | 100 | 8: latency samples per cluster |
//! | `BENCH_TIMEOUT_S` | 300 | how long any one wait may take |
//! | `BENCH_TRACE` | 0 | 1: figures 1, 3, 7 and 8 print the nodes' counters as they go |
//!
//! Writes go through test-only stand-in commands (see asterisk-stubs/README.md):
//! `database bulkput` (ast_db_put in a loop: the module finds these at the
//! family's `sync_interval` read, as for any non-dialplan writer) and `dialplan
//! bulkset` (DB() through the function registry: the module's capture wrapper
//! sees each write at once). Arrival is timed inside the receiving process by
//! `database waitcount` / `database waitfor`; every time is CLOCK_REALTIME in µs,
//! so figures from different processes on this machine compare directly. The CPU
//! those polls take is left out of every CPU figure (`database waitcpu`).
//!
//! Figure 7 runs real `redis-server` processes (`tests/redisd/`) and `redis-benchmark`
//! (`REDIS_SERVER`, `REDIS_CLI`, `REDIS_BENCHMARK` name other binaries): first Redis's
//! own primary→replica rate on this machine, then, for each cluster of
//! `BENCH_REDIS_CLUSTERS`, latency, replicated updates/s (to every other node) and a
//! new node's catch-up as in figures 2, 1 and 3, each on a fresh cluster (and a fresh
//! redis-server); over Redis the nodes have no [node] sections, only `transport = redis`
//! and `redis_url`.
//!
//! Figure 8 does the same (latency and replicated updates/s, no new node) for SIP
//! PUBLISH beside the mesh: with `transport = pjsip` each node's stand-in res_pjsip
//! listens on UDP (node N at the port a mesh node N would take) with a pjsip.conf as
//! tests/pjsip_test.rs has it, an endpoint, inbound-publication and outbound-publish per
//! peer, and preloads res_astdb_cluster_pjsip.so (built beside the library) after the module.

#[path = "../tests/redisd/mod.rs"]
mod redisd;
#[path = "../tests/standin/mod.rs"]
mod standin;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redisd::RedisServer;
use standin::{module_so, StandIn};

const SECRET: &str = "bench-cluster-secret-0123456789";
/// One `-rx` command may take at most standin::CLI_TIMEOUT (60 s): waits are cut in slices.
const WAIT_SLICE_MS: u64 = 50_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn realtime_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The integer that follows `marker` in `text`.
fn num_after(text: &str, marker: &str) -> Option<i64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// "a / b" after `marker`; -1 for what is missing.
fn pair_after(text: &str, marker: &str) -> (i64, i64) {
    let Some(at) = text.find(marker) else {
        return (-1, -1);
    };
    let words: Vec<&str> = text[at + marker.len()..]
        .split_whitespace()
        .take(3)
        .collect();
    let get = |i: usize| words.get(i).and_then(|w| w.parse().ok()).unwrap_or(-1);
    (get(0), get(2))
}

fn must_num(text: &str, marker: &str) -> i64 {
    num_after(text, marker).unwrap_or_else(|| panic!("no number after '{marker}' in:\n{text}"))
}

/// Ports for figure `slot` (1..=4): the harness's slots 5..=9, where the tests' low
/// slots do not reach.
fn base_port(slot: u16) -> u16 {
    standin::port_base(slot + 5)
}

/// [general] of a node whose changes go over `transport` (no node sections).
fn general_head(node: u32, transport: &str) -> String {
    format!(
        "[general]\ncluster_name = bench.cluster\ncluster_node = {node}\n\
         cluster_secret = {SECRET}\ntransport = {transport}\n"
    )
}

fn family(name: &str, interval_ms: u64) -> String {
    format!("\n[{name}]\ntype = family\nmode = global\nsync_interval = {interval_ms}\n")
}

/// What carries a cluster's changes.
#[derive(Clone, Copy)]
enum Net<'a> {
    /// The module's own mesh: a [nodeN] section per peer, a port per node.
    Mesh,
    /// `transport = redis` with this server's URL; no node sections.
    Redis(&'a RedisServer),
    /// `transport = pjsip`: SIP PUBLISH over the stand-in's res_pjsip (UDP, a port per
    /// node), a [nodeN] section per peer naming its outbound-publish in pjsip.conf.
    Pjsip,
}

/// A figure's cluster: its transport, how many nodes its configuration has, and the
/// port slot (1..=4) its mesh nodes listen in.
#[derive(Clone, Copy)]
struct Cluster<'a> {
    net: Net<'a>,
    nodes: u32,
    slot: u16,
}

impl<'a> Cluster<'a> {
    fn mesh(nodes: u32, slot: u16) -> Self {
        Cluster {
            net: Net::Mesh,
            nodes,
            slot,
        }
    }

    /// astdb_cluster.conf of `node`; [general] also holds `general` (option lines).
    fn conf(&self, node: u32, general: &str, families: &str) -> String {
        match self.net {
            Net::Mesh => {
                let all: Vec<u32> = (1..=self.nodes).collect();
                standin::cluster_conf_with(
                    "bench.cluster",
                    SECRET,
                    node,
                    &all,
                    base_port(self.slot),
                    general,
                    families,
                )
            }
            Net::Redis(redis) => format!(
                "{}redis_url = {}\n{general}{families}",
                general_head(node, "redis"),
                redis.url()
            ),
            Net::Pjsip => {
                let peers: String = (1..=self.nodes)
                    .filter(|p| *p != node)
                    .map(|p| {
                        format!("\n[node{p}]\ntype = node\nnode = {p}\noutbound_publish = astdb-node{p}\n")
                    })
                    .collect();
                format!("{}{general}{peers}{families}", general_head(node, "pjsip"))
            }
        }
    }

    fn start(&self, node: u32, general: &str, families: &str) -> StandIn {
        let slot = self.slot;
        let builder = StandIn::builder(&format!("bench{slot}n{node}"))
            .eid(&format!("02:00:00:00:{slot:02x}:{node:02x}"))
            .conf_file("astdb_cluster.conf", &self.conf(node, general, families))
            .module_path(module_so());
        match self.net {
            Net::Pjsip => builder
                .conf_file("pjsip.conf", &self.pjsip_conf(node))
                .module_as(sip_module_so(), "res_astdb_cluster_pjsip.so")
                .preload(&["res_astdb_cluster.so", "res_astdb_cluster_pjsip.so"]),
            _ => builder.preload(&["res_astdb_cluster.so"]),
        }
        .start()
    }

    /// pjsip.conf of `node` over SIP (as tests/pjsip_test.rs has it): node N's UDP
    /// transport at base_port(slot) + N (as a mesh node's TCP port), and for each other
    /// node an endpoint, the inbound-publication of its PUBLISHes and an outbound-publish to it.
    fn pjsip_conf(&self, node: u32) -> String {
        let port = |n: u32| base_port(self.slot) + n as u16;
        let uri = |n: u32| format!("sip:node{node}@127.0.0.1:{}", port(n));
        let peers: String = (1..=self.nodes)
            .filter(|p| *p != node)
            .map(|p| {
                format!(
                    "\n[node{p}]\ntype = endpoint\ncontext = default\n\n[node{p}]\n\
                     type = inbound-publication\nendpoint = node{p}\nevent_asterisk-db = node{p}\n\
                     \n[astdb-node{p}]\ntype = outbound-publish\nserver_uri = {}\n\
                     from_uri = {}\nevent = asterisk-db\n",
                    uri(p),
                    uri(node)
                )
            })
            .collect();
        format!(
            "[transport-udp]\ntype = transport\nprotocol = udp\nbind = 127.0.0.1:{}\n{peers}",
            port(node)
        )
    }

    /// Nodes 1..=`count`.
    fn start_first(&self, count: u32, general: &str, families: &str) -> Vec<StandIn> {
        (1..=count)
            .map(|i| self.start(i, general, families))
            .collect()
    }

    /// Until each of `nodes` (those of the cluster that run) sees all the others up.
    fn wait_up(&self, nodes: &[&StandIn], timeout: Duration) {
        let up = nodes.len().saturating_sub(1);
        match self.net {
            Net::Mesh | Net::Pjsip => {
                let want = format!("{up} of {} peers up", self.nodes.saturating_sub(1));
                for n in nodes {
                    n.wait_for_cli("astdb cluster show status", timeout, |s| s.contains(&want));
                }
            }
            Net::Redis(_) => {
                let want = format!("{up} other node(s) up");
                for n in nodes {
                    n.wait_for_cli("astdb cluster show status", timeout, |s| {
                        s.contains(" connected")
                            && !s.contains("not connected")
                            && s.contains(&want)
                    });
                }
            }
        }
    }

    /// Over Redis, redis-server's pid: a process whose CPU counts with the nodes'.
    fn server_pid(&self) -> Option<u32> {
        match self.net {
            Net::Mesh | Net::Pjsip => None,
            Net::Redis(redis) => redis.pid(),
        }
    }
}

/// res_astdb_cluster_pjsip.so, which build.rs leaves beside the library.
fn sip_module_so() -> std::path::PathBuf {
    let lib = module_so();
    let dir = lib.parent().expect("module dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("profile dir")
    } else {
        dir
    };
    dir.join("res_astdb_cluster_pjsip.so")
}

fn start_node(slot: u16, node: u32, nodes: u32, families: &str) -> StandIn {
    Cluster::mesh(nodes, slot).start(node, "", families)
}

fn wait_all_up(nodes: &[&StandIn], peers: usize, timeout: Duration) {
    for n in nodes {
        n.wait_for_cli("astdb cluster show status", timeout, |s| {
            s.contains(&format!("{peers} of {peers} peers up"))
        });
    }
}

/// Waits (inside `node`) until `family` holds at least `count` keys; returns the
/// realtime µs at which it saw them, or None on timeout.
///
/// Counting a large family costs milliseconds of CPU and AstDB lock, which the
/// node being measured then lacks; so it first waits for the last key written,
/// `k<count-1>` (a cheap lookup every 100 µs), and counts only from then on.
/// Replication need not deliver that key last: the count still decides.
fn wait_count(node: &StandIn, family: &str, count: usize, timeout: Duration) -> Option<i64> {
    let deadline = Instant::now() + timeout;
    let last = count.saturating_sub(1);
    while Instant::now() < deadline {
        let out = node.cli(&format!(
            "database waitfor {family} k{last} {WAIT_SLICE_MS}"
        ));
        if !out.contains("Timeout") {
            break;
        }
    }
    loop {
        let out = node.cli(&format!(
            "database waitcount {family} {count} {WAIT_SLICE_MS}"
        ));
        if out.contains("Reached") {
            return Some(must_num(&out, " at "));
        }
        if Instant::now() > deadline {
            eprintln!("  {}: {out}", node.name());
            return None;
        }
    }
}

fn count(node: &StandIn, family: &str) -> i64 {
    must_num(&node.cli(&format!("database count {family}")), "Keys:")
}

/// "<label> N ... (M ...)" from `astdb cluster show status`: N and M, -1 for what is
/// missing.
fn status_pair(node: &StandIn, label: &str) -> (i64, i64) {
    let status = node.cli("astdb cluster show status");
    let Some(at) = status.find(label) else {
        return (-1, -1);
    };
    let line = &status[at..];
    (
        num_after(line, label).unwrap_or(-1),
        num_after(line, "(").unwrap_or(-1),
    )
}

/// "Family reads: N (M more skipped ...)".
fn family_reads(node: &StandIn) -> (i64, i64) {
    status_pair(node, "Family reads:")
}

/// "Reads in pieces: N times (M found something new)".
fn piece_reads(node: &StandIn) -> (i64, i64) {
    status_pair(node, "Reads in pieces:")
}

fn status_number(node: &StandIn, label: &str) -> i64 {
    num_after(&node.cli("astdb cluster show status"), label).unwrap_or(-1)
}

/// Bytes (in, out) that `node` counts for its peer `peer` in `astdb cluster show nodes`.
fn peer_bytes(node: &StandIn, peer: u32) -> (u64, u64) {
    let out = node.cli(&format!("astdb cluster show nodes {peer}"));
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&peer.to_string().as_str()) {
            continue;
        }
        // "Bytes in/out" then "Frames in/out", each rendered "a / b".
        if let Some(i) = words.windows(3).position(|w| w[1] == "/") {
            if let (Ok(a), Ok(b)) = (words[i].parse(), words[i + 2].parse()) {
                return (a, b);
            }
        }
    }
    panic!("no byte counters for node {peer} in:\n{out}");
}

/// CPU seconds (user + system, all threads) the stand-in process has used so far, less
/// what its `database waitfor` / `waitcount` commands used: those polls are the bench's,
/// not the module's, and `ast_db_put` alone is measured without them.
fn cpu_secs(node: &StandIn) -> f64 {
    let polls_us = node
        .try_cli("database waitcpu")
        .ok()
        .and_then(|out| num_after(&out, "Wait CPU:"))
        .unwrap_or(0);
    pid_cpu_secs(node.pid()) - polls_us as f64 / 1e6
}

/// CPU seconds (user + system, all threads) process `pid` has used so far.
fn pid_cpu_secs(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(0.0, |stat| stat_cpu_secs(&stat))
}

/// User + system CPU seconds in a /proc `stat` line (a process's or a thread's).
fn stat_cpu_secs(stat: &str) -> f64 {
    // Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let ticks: f64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|w| w.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

fn cpu_line(nodes: &[&StandIn], before: &[f64], n: usize) -> String {
    let numbered: Vec<(u32, &StandIn)> = (1..).zip(nodes.iter().copied()).collect();
    cpu_line_of(&numbered, before, n)
}

/// CPU each (node number, node) used since `before`, in all and per update.
fn cpu_line_of(nodes: &[(u32, &StandIn)], before: &[f64], n: usize) -> String {
    nodes
        .iter()
        .zip(before)
        .map(|((i, node), b)| {
            let used = cpu_secs(node) - b;
            format!(
                "node {i}: {used:.2} CPU-s ({:.1} us/update)",
                used * 1e6 / n as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn rate(n: usize, us: i64) -> String {
    if us <= 0 {
        return "n/a".into();
    }
    format!("{:.0}/s", n as f64 / (us as f64 / 1e6))
}

fn secs(us: i64) -> String {
    format!("{:.3} s", us as f64 / 1e6)
}

fn header(title: &str) {
    println!("\n== {title}");
    println!("   load average at start: {}", load());
}

/// Figure 1: replicated updates/s from one writer to two peers, for the CLI path
/// (found by the family read) and the dialplan path (captured at once).
fn figure_updates(n: usize, repeat: usize, timeout: Duration, trace: bool) {
    header(&format!(
        "1. replicated updates/s, one writer (node 1) to two peers, N = {n}, {repeat} runs per path"
    ));
    let dialplan = format!("dialplan bulkset {n} DB(bench_dp/k{{i}})=v{{i}}");
    let paths = [
        (
            "CLI/AMI path (database bulkput: ast_db_put loop, found by the 500 ms family read)",
            "cli",
            "bench_cli",
            500,
            "",
            format!("database bulkput bench_cli k {n}"),
        ),
        (
            "dialplan path (dialplan bulkset: DB() via the function registry, captured at once)",
            "dialplan",
            "bench_dp",
            5000,
            "",
            dialplan.clone(),
        ),
        (
            "dialplan path, change events off (events = no)",
            "events",
            "bench_dp",
            5000,
            "events = no\n",
            dialplan.clone(),
        ),
        (
            "dialplan path, an event per key on every node (event_batch_limit = 1000000), each \n    \
             a Stasis message delivered to the stand-in's AMI event log (as to a connected AMI client)",
            "events",
            "bench_dp",
            5000,
            "event_batch_limit = 1000000\n",
            dialplan,
        ),
    ];
    // Each path on a cluster of its own: a family filled by one path would otherwise be
    // read at its interval all through the other's measurement.
    let wanted =
        std::env::var("BENCH_UPDATE_PATHS").unwrap_or_else(|_| "cli,dialplan,events".into());
    // The yardstick of the receivers' CPU: ast_db_put of the same n keys alone.
    let put = reference_put(n, "");
    for (what, short, fam, interval, general, cmd) in paths {
        if !wanted.split(',').any(|w| w.trim() == short) {
            continue;
        }
        println!("  {what}");
        let mut rates = Vec::new();
        for run in 1..=repeat {
            let cluster = Cluster::mesh(3, 1);
            let r = updates_run(
                &cluster, n, fam, interval, general, &cmd, timeout, trace, run,
            );
            rates.extend(r.rate);
            println!(
                "      => receivers' CPU per update vs ast_db_put alone ({:.2} us): {}   [target <= 1.3x]",
                put.cpu_us,
                r.receivers_us
                    .iter()
                    .enumerate()
                    .map(|(i, us)| format!(
                        "node {}: {us:.2} us ({:.2}x)",
                        i + 2,
                        us / put.cpu_us.max(1e-9)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        rates.sort_by(f64::total_cmp);
        if let Some(median) = rates.get(rates.len() / 2) {
            println!(
                "    => replicated updates/s, median of {} runs (first write to both peers complete): {median:.0}/s   [target >= 100000/s]",
                rates.len()
            );
        }
    }
}

/// What one run of [`updates_run`] measured.
struct UpdatesRun {
    /// Replicated updates/s, if every peer got every key.
    rate: Option<f64>,
    /// The writer's (node 1's) process CPU per update, first write to last arrival, µs.
    writer_us: f64,
    /// The same for each receiver (nodes 2..N).
    receivers_us: Vec<f64>,
}

/// "both peers" or "all N peers".
fn peers_word(peers: usize) -> String {
    if peers == 2 {
        "both peers".into()
    } else {
        format!("all {peers} peers")
    }
}

/// One run of figure 1 on a fresh cluster of `cluster.nodes` nodes: node 1 runs `cmd`,
/// every other node waits for the `n` keys of `fam`.
#[allow(clippy::too_many_arguments)]
fn updates_run(
    cluster: &Cluster,
    n: usize,
    fam: &str,
    interval: u64,
    general: &str,
    cmd: &str,
    timeout: Duration,
    trace: bool,
    run: usize,
) -> UpdatesRun {
    let families = family(fam, interval);
    let nodes = cluster.start_first(cluster.nodes, general, &families);
    let refs: Vec<&StandIn> = nodes.iter().collect();
    cluster.wait_up(&refs, Duration::from_secs(30));
    let peers = nodes.len() - 1;
    let done = std::sync::atomic::AtomicBool::new(false);
    let cpu_before: Vec<f64> = nodes.iter().map(cpu_secs).collect();
    let server_before = pid_cpu_secs(cluster.server_pid());
    let redis_before: Vec<(f64, f64)> = nodes.iter().map(redis_threads_cpu).collect();
    let (write, arrivals) = std::thread::scope(|s| {
        let waiters: Vec<_> = nodes[1..]
            .iter()
            .map(|peer| s.spawn(move || wait_count(peer, fam, n, timeout)))
            .collect();
        if trace {
            let (nodes, done) = (&nodes, &done);
            s.spawn(move || progress(nodes, done));
        }
        // The waiters look at an empty family first; give their -rx a moment to connect.
        // Then a different moment of the family's read interval each run: the loop reads
        // at exact intervals from the share, and a fixed start would always land the
        // writes at the same place in it (a writer found at once, or always an interval
        // late), so the CLI path's median would be luck of the phase.
        let phase = interval * ((run as u64 - 1) % 7) / 7;
        std::thread::sleep(Duration::from_millis(200 + phase));
        let write = nodes[0].cli(cmd);
        let arrivals: Vec<Option<i64>> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (write, arrivals)
    });
    let writer_us = (cpu_secs(&nodes[0]) - cpu_before[0]) * 1e6 / n as f64;
    let receivers_us: Vec<f64> = nodes[1..]
        .iter()
        .zip(&cpu_before[1..])
        .map(|(node, before)| (cpu_secs(node) - before) * 1e6 / n as f64)
        .collect();
    let server_used = pid_cpu_secs(cluster.server_pid()) - server_before;
    let redis_after: Vec<(f64, f64)> = nodes.iter().map(redis_threads_cpu).collect();
    let loop_cpu: Vec<f64> = nodes.iter().map(loop_cpu_secs).collect();
    let start = must_num(&write, "start");
    let end = must_num(&write, "end");
    let lacks = |i: usize| {
        format!(
            "node {} did NOT get all keys within {timeout:?} (has {})",
            i + 2,
            count(&nodes[i + 1], fam)
        )
    };
    let missing: Vec<String> = arrivals
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is_none())
        .map(|(i, _)| lacks(i))
        .collect();
    let held = if peers <= 2 {
        arrivals
            .iter()
            .enumerate()
            .map(|(i, a)| match a {
                Some(t) => format!("node {} all keys at {}", i + 2, secs(t - start)),
                None => lacks(i),
            })
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        let got: Vec<i64> = arrivals.iter().flatten().copied().collect();
        let mut text = match (got.iter().min(), got.iter().max()) {
            (Some(first), Some(last)) => format!(
                "{} of {peers} peers all keys, the first at {}, the last at {}",
                got.len(),
                secs(first - start),
                secs(last - start)
            ),
            _ => format!("no peer got all keys within {timeout:?}"),
        };
        for m in &missing {
            text.push_str("; ");
            text.push_str(m);
        }
        text
    };
    println!(
        "    run {run}: {n} writes on node 1 in {} ({}, the stand-in's own rate); {held}",
        secs(end - start),
        rate(n, end - start),
    );
    let result = if missing.is_empty() {
        let last = arrivals.iter().flatten().max().copied().unwrap_or(end);
        println!(
            "      {} replicated updates/s (first write to {} complete); the peers needed {} after the last write",
            rate(n, last - start),
            peers_word(peers),
            secs(last - end)
        );
        Some(n as f64 / ((last - start).max(1) as f64 / 1e6))
    } else {
        None
    };
    let server = if cluster.server_pid().is_some() {
        format!(
            "; redis-server: {server_used:.2} CPU-s ({:.1} us/update)",
            server_used * 1e6 / n as f64
        )
    } else {
        String::new()
    };
    println!(
        "      CPU used, first write to last arrival (less the bench's own polling): {}{server}; load now {}",
        cpu_line(&refs, &cpu_before, n),
        load()
    );
    let events: Vec<String> = nodes.iter().map(event_counts).collect();
    println!(
        "      module thread (astdb-cl-node) CPU over the whole run: {}",
        loop_cpu
            .iter()
            .enumerate()
            .map(|(i, c)| format!("node {}: {c:.2} s", i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Net::Redis(_) = cluster.net {
        println!(
            "      Redis link threads, first write to last arrival (reader astdb-cl-rd-in / writer -out): {}",
            redis_before
                .iter()
                .zip(&redis_after)
                .enumerate()
                .map(|(i, ((r0, w0), (r1, w1)))| {
                    format!(
                        "node {}: {:.2} / {:.2} s ({:.1} / {:.1} us/update)",
                        i + 1,
                        r1 - r0,
                        w1 - w0,
                        (r1 - r0) * 1e6 / n as f64,
                        (w1 - w0) * 1e6 / n as f64
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Net::Redis(redis) = cluster.net {
        println!(
            "      redis-server's time by command over the whole run (INFO commandstats; a script's inner calls count in both): {}",
            command_stats(redis, n)
        );
    }
    for line in health(&refs) {
        println!("      {line}");
    }
    println!(
        "      AMI events raised (after Stasis delivered everything queued): {}",
        events.join(", ")
    );
    UpdatesRun {
        rate: result,
        writer_us,
        receivers_us,
    }
}

/// CPU seconds the module's own thread has used so far.
fn loop_cpu_secs(node: &StandIn) -> f64 {
    threads_cpu_secs(node, &["astdb-cl-node"])
}

/// (tid, CPU seconds) of the stand-in's threads whose name starts with one of `names`,
/// by tid.
fn threads_cpu(node: &StandIn, names: &[&str]) -> Vec<(u64, f64)> {
    let Some(pid) = node.pid() else {
        return Vec::new();
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<(u64, f64)> = tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| names.iter().any(|n| c.trim().starts_with(n)))
        })
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            Some((tid, stat_cpu_secs(&stat)))
        })
        .collect();
    threads.sort_by_key(|t| t.0);
    threads
}

/// CPU seconds the stand-in's threads whose name starts with one of `names` have used
/// so far.
fn threads_cpu_secs(node: &StandIn, names: &[&str]) -> f64 {
    threads_cpu(node, names).iter().fold(0.0, |a, t| a + t.1)
}

/// CPU seconds of the Redis link's (reader, writer) threads so far.
fn redis_threads_cpu(node: &StandIn) -> (f64, f64) {
    (
        threads_cpu_secs(node, &["astdb-cl-rd-in"]),
        threads_cpu_secs(node, &["astdb-cl-rd-out"]),
    )
}

/// The commands redis-server spent most time in: calls, µs per call and per update
/// (of `n`), from `INFO commandstats`.
fn command_stats(redis: &RedisServer, n: usize) -> String {
    let info = redis.try_cli(&["INFO", "commandstats"]).unwrap_or_default();
    // cmdstat_evalsha:calls=616,usec=2504771,usec_per_call=4066.19,...
    let mut stats: Vec<(String, i64, i64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            Some((
                name.to_string(),
                num_after(rest, "calls=")?,
                num_after(rest, "usec=")?,
            ))
        })
        .collect();
    stats.sort_by_key(|s| -s.2);
    stats
        .iter()
        .take(5)
        .map(|(name, calls, usec)| {
            format!(
                "{name} {calls} calls, {:.0} us/call, {:.2} us/update",
                *usec as f64 / (*calls).max(1) as f64,
                *usec as f64 / n.max(1) as f64
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What may have gone wrong on `nodes`: their change counters (sent / received,
/// applied, dropped; sends not delivered, refused, undecodable) and the WARNING and
/// ERROR lines of their logs.
fn health(nodes: &[&StandIn]) -> Vec<String> {
    let mut counters = Vec::new();
    let mut problems = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let status = node.cli("astdb cluster show status");
        let (sent, received) = pair_after(&status, "Changes sent / received:");
        let get = |label: &str| num_after(&status, label).unwrap_or(-1);
        counters.push(format!(
            "node {}: {sent} / {received}, {} applied, {} dropped",
            i + 1,
            get("Remote changes applied:"),
            get("Remote changes dropped:")
        ));
        for label in ["Sends not delivered:", "Undecodable messages:", "Refused:"] {
            let v = get(label);
            if v != 0 {
                problems.push(format!("node {}: {label} {v}", i + 1));
            }
        }
        if status.contains("change(s) waiting") || status.contains("not connected") {
            problems.push(format!("node {}: Network: {}", i + 1, network_line(node)));
        }
        let log = node.log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("] WARNING[") || l.contains("] ERROR["))
            .collect();
        if let Some(first) = bad.first() {
            problems.push(format!(
                "node {}: {} WARNING/ERROR log line(s), the first: {}",
                i + 1,
                bad.len(),
                first.trim()
            ));
        }
    }
    vec![
        format!(
            "changes sent / received, applied, dropped: {}",
            counters.join("; ")
        ),
        if problems.is_empty() {
            "problems: none (no sends undelivered, nothing refused, no WARNING/ERROR in the logs)"
                .into()
        } else {
            format!("PROBLEMS: {}", problems.join("; "))
        },
    ]
}

/// How many key change and summary events a node's AMI event log holds.
fn event_counts(node: &StandIn) -> String {
    // Stasis delivers on its own thread: wait until it has nothing queued.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = node.cli("stasis show messages");
        if out.lines().last().is_some_and(|l| l.contains(" 0 queued")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(node.log_dir().join("events")).unwrap_or_default();
    let keys = log.matches("Event: AstDBClusterKeyChange").count();
    let summaries = log.matches("Event: AstDBClusterChangeSummary").count();
    format!("{} {keys} key, {summaries} summary", node.name())
}

/// Figure 6: how soon a CLI `database put` or AMI `DBPut` (any writer but the dialplan)
/// to a small family reaches a peer, with the family's sync_interval at its default
/// (5 s): the loop reads families of up to 10,000 keys as soon as AstDB commits.
fn figure_capture(samples: usize) {
    header(&format!(
        "6. other writers: CLI database put / AMI DBPut on node 1 seen on node 2, family of 1,000 keys, sync_interval 5000 ms, {samples} samples"
    ));
    let families = family("bench_cap", 5000);
    let nodes: Vec<StandIn> = (1..=2).map(|i| start_node(2, i, 2, &families)).collect();
    let refs: Vec<&StandIn> = nodes.iter().collect();
    wait_all_up(&refs, 1, Duration::from_secs(30));
    nodes[0].cli("database bulkput bench_cap k 1000");
    if wait_count(&nodes[1], "bench_cap", 1000, Duration::from_secs(60)).is_none() {
        println!("  node 2 never got the family; skipped");
        return;
    }
    // Idle cost: both nodes quiet, the small family shared.
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<f64> = nodes.iter().map(cpu_secs).collect();
    let reads_before = family_reads(&nodes[0]);
    std::thread::sleep(Duration::from_secs(10));
    let reads_after = family_reads(&nodes[0]);
    println!(
        "  idle for 10 s: node 1 {:.3} CPU-s, node 2 {:.3} CPU-s; node 1 read the family {} time(s) ({} skipped)",
        cpu_secs(&nodes[0]) - before[0],
        cpu_secs(&nodes[1]) - before[1],
        reads_after.0 - reads_before.0,
        reads_after.1 - reads_before.1
    );
    let mut lat = Vec::new();
    let mut missed = 0;
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..samples {
        let key = format!("c{i}");
        let (visible, start) = std::thread::scope(|s| {
            let w = s.spawn(|| nodes[1].cli(&format!("database waitfor bench_cap {key} 10000")));
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Random moments, so the writes land anywhere in AstDB's commit second.
            std::thread::sleep(Duration::from_millis(30 + rng % 1000));
            let start = realtime_us();
            if i % 2 == 0 {
                nodes[0].cli(&format!("database put bench_cap {key} x{i}"));
            } else {
                nodes[0].cli(&format!(
                    "manager action DBPut Family=bench_cap Key={key} Val=x{i}"
                ));
            }
            (w.join().unwrap(), start)
        });
        if visible.contains("Visible") {
            lat.push(must_num(&visible, " at ") - start);
        } else {
            missed += 1;
        }
    }
    lat.sort_unstable();
    if lat.is_empty() {
        println!("  no samples ({missed} missed)");
        return;
    }
    println!(
        "  write to visible on the peer: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples, {missed} missed)   [target p99 <= 1500 ms]",
        percentile(&lat, 0.5) as f64 / 1e3,
        percentile(&lat, 0.99) as f64 / 1e3,
        lat[lat.len() - 1] as f64 / 1e3,
        lat.len()
    );
    println!(
        "  (from just before the CLI command on node 1 to the first poll on node 2 that sees the key;\n  \
         most of it is AstDB's own commit delay of up to about a second. load now {})",
        load()
    );
}

/// Every second until `done`: where the changes are (which stage lags).
fn progress(nodes: &[StandIn], done: &std::sync::atomic::AtomicBool) {
    let t0 = Instant::now();
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        let s1 = nodes[0].cli("astdb cluster show status");
        let s2 = nodes[1].cli("astdb cluster show status");
        let s3 = nodes[2].cli("astdb cluster show status");
        println!(
            "      t={:4.1}s node 1: dialplan writes seen {}, local changes {}, changes sent {} | node 2: received {}, applied {} | node 3: received {}, applied {}",
            t0.elapsed().as_secs_f64(),
            num_after(&s1, "Dialplan writes seen:").unwrap_or(-1),
            num_after(&s1, "Local changes:").unwrap_or(-1),
            num_after(&s1, "Changes sent / received:").unwrap_or(-1),
            pair_after(&s2, "Changes sent / received:").1,
            num_after(&s2, "Remote changes applied:").unwrap_or(-1),
            pair_after(&s3, "Changes sent / received:").1,
            num_after(&s3, "Remote changes applied:").unwrap_or(-1),
        );
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Write-to-visible latencies (µs) of single dialplan DB() writes of `fam` on `writer`:
/// to the first of `watchers` seeing it, and to the last of them.
struct Latencies {
    first_peer: Vec<i64>,
    all_peers: Vec<i64>,
    missed: usize,
}

/// `samples` single DB() writes on `writer`, each timed until every one of `watchers`
/// sees it (`database waitfor` in each); both lists come back sorted.
fn latency_samples(
    writer: &StandIn,
    watchers: &[&StandIn],
    fam: &str,
    samples: usize,
) -> Latencies {
    // Warm-up: the first write after start may pay for lazy set-up.
    writer.cli(&format!("dialplan set DB({fam}/warmup)=1"));
    for w in watchers {
        w.cli(&format!("database waitfor {fam} warmup 10000"));
    }
    let mut first_peer = Vec::new();
    let mut all_peers = Vec::new();
    let mut missed = 0;
    // More waiters need longer to connect and take their first look.
    let mut lead = Duration::from_millis(30 * watchers.len().max(1) as u64);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..samples {
        let key = format!("s{i}");
        let (visible, write) = std::thread::scope(|s| {
            let waits: Vec<_> = watchers
                .iter()
                .map(|w| {
                    let key = &key;
                    s.spawn(move || w.cli(&format!("database waitfor {fam} {key} 10000")))
                })
                .collect();
            // Let the waiters' -rx connect and take their first look before the write;
            // the random part keeps the samples from locking to the module's 100 ms tick.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            std::thread::sleep(lead + Duration::from_micros(rng % 100_000));
            let write = writer.cli(&format!("dialplan bulkset 1 DB({fam}/{key})=x{i}"));
            let visible: Vec<String> = waits.into_iter().map(|w| w.join().unwrap()).collect();
            (visible, write)
        });
        if visible.iter().all(|v| v.contains("Visible")) {
            let start = must_num(&write, "start");
            first_peer.push(must_num(&visible[0], " at ") - start);
            all_peers.push(
                visible
                    .iter()
                    .map(|v| must_num(v, " at ") - start)
                    .max()
                    .unwrap_or(0),
            );
        } else {
            // A waiter started after the value arrived (or timed out): not a sample.
            missed += 1;
            lead += Duration::from_millis(10);
        }
    }
    first_peer.sort_unstable();
    all_peers.sort_unstable();
    Latencies {
        first_peer,
        all_peers,
        missed,
    }
}

/// "p50 …, p99 …, min …, max …, mean … (n samples, m discarded)" of sorted µs.
fn latency_line(lat: &[i64], missed: usize) -> String {
    if lat.is_empty() {
        return format!("no samples ({missed} missed)");
    }
    let mean = lat.iter().sum::<i64>() as f64 / lat.len() as f64;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, min {:.2} ms, max {:.2} ms, mean {:.2} ms ({} samples, {missed} discarded)",
        percentile(lat, 0.5) as f64 / 1e3,
        percentile(lat, 0.99) as f64 / 1e3,
        lat[0] as f64 / 1e3,
        lat[lat.len() - 1] as f64 / 1e3,
        mean / 1e3,
        lat.len()
    )
}

/// Figure 2: write-to-visible latency of single dialplan DB() writes under light load.
fn figure_latency(samples: usize) {
    header(&format!(
        "2. write-to-visible latency, single dialplan DB() writes on node 1 seen on node 2, {samples} samples"
    ));
    let families = family("bench_lat", 5000);
    let nodes: Vec<StandIn> = (1..=3).map(|i| start_node(2, i, 3, &families)).collect();
    let refs: Vec<&StandIn> = nodes.iter().collect();
    wait_all_up(&refs, 2, Duration::from_secs(30));
    let lat = latency_samples(&nodes[0], &[&nodes[1]], "bench_lat", samples);
    println!("  {}", latency_line(&lat.first_peer, lat.missed));
    println!(
        "  measured from just before the DB() write on node 1 (its clock) to the first poll that\n  \
         sees the key on node 2 (`database waitfor`, polling ast_db_get inside the process every\n  \
         100 us for 20 ms, then every ms: resolution ~0.1-0.2 ms below 20 ms; both\n  \
         CLOCK_REALTIME on one machine). load now {}",
        load()
    );
}

/// Every half second until `done`: what the sender has sent and the new node applied.
fn catch_up_progress(
    node1: &StandIn,
    node2: &StandIn,
    spawned: i64,
    done: &std::sync::atomic::AtomicBool,
) {
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let s1 = node1.cli("astdb cluster show status");
        let s2 = node2.cli("astdb cluster show status");
        println!(
            "      t={:5.2}s node 1: changes sent {} | node 2: received {}, applied {}; CPU-s node 1 {:.2}, node 2 {:.2}; node 2 RSS {} KiB",
            (realtime_us() - spawned) as f64 / 1e6,
            num_after(&s1, "Changes sent / received:").unwrap_or(-1),
            pair_after(&s2, "Changes sent / received:").1,
            num_after(&s2, "Remote changes applied:").unwrap_or(-1),
            cpu_secs(node1),
            cpu_secs(node2),
            rss_kib(node2, "VmRSS:"),
        );
    }
}

/// Figure 3: how long a node that starts empty takes to hold a family of `n` keys.
fn figure_new_node(n: usize, timeout: Duration, trace: bool) {
    header(&format!("3. a new node receives a {n}-key global family"));
    new_node_run(&Cluster::mesh(2, 3), n, timeout, trace);
}

/// A new node joining a cluster that holds `n` keys: nodes 1..N-1 of `cluster` start,
/// node 1 writes the family (bulkput) and the others receive it; then node N starts
/// empty. The µs from node N's spawn to all keys present there.
fn new_node_run(cluster: &Cluster, n: usize, timeout: Duration, trace: bool) -> Option<i64> {
    let families = family("bench_big", 5000);
    let last = cluster.nodes;
    let holders = cluster.start_first(last - 1, "", &families);
    let node1 = &holders[0];
    if holders.len() > 1 {
        let refs: Vec<&StandIn> = holders.iter().collect();
        cluster.wait_up(&refs, Duration::from_secs(30));
    }
    let rss1_before = rss_kib(node1, "VmRSS:");
    // Values are v<i> unless BENCH_NEW_NODE_VALUE gives one for every key.
    let value = std::env::var("BENCH_NEW_NODE_VALUE").unwrap_or_default();
    if !value.is_empty() {
        println!("  every value is '{value}' ({} bytes)", value.len());
    }
    let out = node1.cli(&format!("database bulkput bench_big k {n} {value}"));
    let took = must_num(&out, "end") - must_num(&out, "start");
    println!(
        "  node 1: {n} keys written by bulkput in {} ({})",
        secs(took),
        rate(n, took)
    );
    // Wait until the module has read them (its 5 s family read), so node N gets them
    // from the engine and not from a race with the first read.
    let t = Instant::now();
    let deadline = t + timeout;
    loop {
        let seen = status_number(node1, "Local changes:");
        if seen >= n as i64 {
            println!(
                "  node 1's module took them in (local changes {seen}) {:.1} s after the bulkput",
                t.elapsed().as_secs_f64()
            );
            break;
        }
        if Instant::now() > deadline {
            println!("  node 1's module did not take the keys in (local changes {seen}); skipped");
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if holders.len() > 1 {
        let t0 = Instant::now();
        let others: Vec<Option<i64>> = std::thread::scope(|s| {
            let waits: Vec<_> = holders[1..]
                .iter()
                .map(|h| s.spawn(move || wait_count(h, "bench_big", n, timeout)))
                .collect();
            waits.into_iter().map(|w| w.join().unwrap()).collect()
        });
        if others.iter().any(Option::is_none) {
            println!(
                "  nodes 2..{} did not all get the {n} keys within {timeout:?} (they have {}); skipped",
                last - 1,
                holders[1..]
                    .iter()
                    .map(|h| count(h, "bench_big").to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return None;
        }
        println!(
            "  nodes 2..{} hold them too, {:.1} s after node 1's module took them in",
            last - 1,
            t0.elapsed().as_secs_f64()
        );
    }
    // Steady: the loop idle a moment after taking them in, and its heap trimmed.
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "  node 1 memory: RSS {} -> {} KiB 1 s after the module took them in ({:.0} B/key; peak RSS {} KiB, during its read of the family)   [target <= 110 B/key]",
        rss1_before,
        rss_kib(node1, "VmRSS:"),
        per_key(rss_kib(node1, "VmRSS:") - rss1_before, n),
        rss_kib(node1, "VmHWM:")
    );
    // What holding the family costs node 1 alone: its reads at the 5 s interval, skipped
    // while AstDB has committed nothing.
    let idle = Duration::from_secs(10);
    let c0 = cpu_secs(node1);
    let reads0 = family_reads(node1);
    std::thread::sleep(idle);
    let reads1 = family_reads(node1);
    println!(
        "  node 1{}, nothing changing: {:.2} CPU-s in {:.0} s; family reads {} done, {} skipped (AstDB unchanged); RSS then {} KiB ({:.0} B/key)",
        if holders.len() > 1 { "" } else { " alone" },
        cpu_secs(node1) - c0,
        idle.as_secs_f64(),
        reads1.0 - reads0.0,
        reads1.1 - reads0.1,
        rss_kib(node1, "VmRSS:"),
        per_key(rss_kib(node1, "VmRSS:") - rss1_before, n),
    );
    // The yardstick, measured just before node N starts: its own ast_db_put of n keys.
    let put = reference_put(n, &value);
    println!("  load before node {last} starts: {}", load());
    let cpu1 = cpu_secs(node1);
    let server_before = pid_cpu_secs(cluster.server_pid());
    let spawned = realtime_us();
    let new = cluster.start(last, "", &families);
    let answering = realtime_us();
    let rss2_before = rss_kib(&new, "VmRSS:");
    let done = std::sync::atomic::AtomicBool::new(false);
    let arrived = std::thread::scope(|s| {
        if trace {
            let (new, done) = (&new, &done);
            s.spawn(move || catch_up_progress(node1, new, spawned, done));
        }
        let arrived = wait_count(&new, "bench_big", n, timeout);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        arrived
    });
    let server_used = pid_cpu_secs(cluster.server_pid()) - server_before;
    let threads = match cluster.net {
        Net::Mesh | Net::Pjsip => {
            let (node, writer) = (
                loop_cpu_secs(&new),
                threads_cpu_secs(&new, &["astdb-cl-dbw"]),
            );
            let transport = threads_cpu_secs(&new, &["astdb-tx"]);
            let events = threads_cpu_secs(&new, &["astdb-cl-events"]);
            format!(
                "module thread (astdb-cl-node) {node:.2} s, AstDB writer (astdb-cl-dbw) {writer:.2} s, transport (astdb-tx-*) {transport:.2} s, link events (astdb-cl-events) {events:.2} s, the rest of the process {:.2} s",
                cpu_secs(&new) - node - writer - transport - events
            )
        }
        Net::Redis(_) => {
            let (r, w) = redis_threads_cpu(&new);
            format!(
                "module thread (astdb-cl-node) {:.2} s, Redis reader {r:.2} s, Redis writer {w:.2} s",
                loop_cpu_secs(&new)
            )
        }
    };
    let mut cpu = cpu_line_of(&[(1, node1), (last, &new)], &[cpu1, 0.0], n);
    if cluster.server_pid().is_some() {
        cpu.push_str(&format!(
            ", redis-server: {server_used:.2} CPU-s ({:.1} us/key)",
            server_used * 1e6 / n as f64
        ));
    }
    println!("  CPU used from node {last}'s spawn to the last key: {cpu}");
    println!("  node {last}'s threads, spawn to the last key: {threads}");
    match arrived {
        Some(done) => {
            println!(
                "  node {last} started (control socket answering after {}), holds all {n} keys {} after spawn",
                secs(answering - spawned),
                secs(done - spawned)
            );
            println!(
                "  => new node receives {n} keys in {} ({})   [target < 10 s for 1000000]",
                secs(done - spawned),
                rate(n, done - spawned)
            );
            let new_cpu_us = cpu_secs(&new) * 1e6 / n.max(1) as f64;
            println!(
                "  => catch-up {} vs ast_db_put alone {}: {:.2}x   [target <= 1.2x]",
                secs(done - spawned),
                secs(put.took_us),
                (done - spawned) as f64 / put.took_us.max(1) as f64
            );
            println!(
                "  => node {last}'s CPU per received key {new_cpu_us:.2} us vs ast_db_put alone {:.2} us: {:.2}x   [target <= 1.3x]",
                put.cpu_us,
                new_cpu_us / put.cpu_us.max(1e-9)
            );
        }
        None => println!(
            "  node {last} did NOT get all keys within {timeout:?}: has {}",
            count(&new, "bench_big")
        ),
    }
    // Steady: once the catch-up is over and the family read that follows it (applies
    // touched AstDB, so the next read is not skipped) is done, the heap trimmed. That
    // read holds AstDB's answer for a moment, one piece of the family at a time (a
    // large family is read in pieces; whole only where a piece read finds something
    // new): the peak is shown without it (the transfer) and with it.
    let transfer_peak = rss_kib(&new, "VmHWM:");
    let reads_before = family_reads(&new).0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let read_done = loop {
        if family_reads(&new).0 > reads_before {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_secs(1));
    let (steady, peak) = (rss_kib(&new, "VmRSS:"), rss_kib(&new, "VmHWM:"));
    let growth = |kib: i64| (kib - rss2_before) as f64 / (steady - rss2_before).max(1) as f64;
    let (pieces, pieces_new) = piece_reads(&new);
    println!(
        "  node {last} memory: RSS {} -> {} KiB {} ({:.0} B/key); peak RSS during the transfer {} KiB ({:.2}x the steady growth), with that read {} KiB ({:.2}x)   [target <= 110 B/key, peak <= 1.5x]; reads in pieces so far {pieces}, {pieces_new} of them finding something new",
        rss2_before,
        steady,
        if read_done {
            "1 s after its first family read since the catch-up"
        } else {
            "(no family read within 20 s of the catch-up)"
        },
        per_key(steady - rss2_before, n),
        transfer_peak,
        growth(transfer_peak),
        peak,
        growth(peak)
    );
    match cluster.net {
        Net::Mesh | Net::Pjsip => {
            let counters: Vec<String> = (1..last)
                .map(|peer| {
                    let (bin, bout) = peer_bytes(&new, peer);
                    format!(
                        "for node {peer}: {bin} bytes in, {bout} bytes out ({:.1} B/key in)",
                        bin as f64 / n as f64
                    )
                })
                .collect();
            println!(
                "  node {last}'s counters {}; load now {}",
                counters.join("; "),
                load()
            );
        }
        Net::Redis(redis) => {
            let info = redis.cli(&["INFO", "memory"]);
            println!(
                "  Redis used_memory {} KiB ({:.0} B/key, the family's hash and the change stream); status of node {last}: {}; load now {}",
                num_after(&info, "used_memory:").unwrap_or(-1) / 1024,
                num_after(&info, "used_memory:").unwrap_or(0) as f64 / n as f64,
                network_line(&new),
                load()
            );
        }
    }
    let mut all: Vec<&StandIn> = holders.iter().collect();
    all.push(&new);
    for line in health(&all) {
        println!("  {line}");
    }
    arrived.map(|t| t - spawned)
}

/// The Network line of `astdb cluster show status`.
fn network_line(node: &StandIn) -> String {
    node.cli("astdb cluster show status")
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Network:")
                .map(|r| r.trim().to_string())
        })
        .unwrap_or_default()
}

/// A memory figure of the stand-in's process from /proc/<pid>/status, in KiB (`field`:
/// "VmRSS:" now, "VmHWM:" the peak); 0 if unknown.
fn rss_kib(node: &StandIn, field: &str) -> i64 {
    let Some(pid) = node.pid() else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| num_after(&s, field))
        .unwrap_or(0)
}

fn per_key(kib: i64, n: usize) -> f64 {
    kib as f64 * 1024.0 / n.max(1) as f64
}

/// What `ast_db_put` alone costs on this machine now: a stand-in without the module
/// puts `n` keys (`database bulkput`, values `value` or v<i>) into an empty AstDB. The
/// wall time of the loop and the process's CPU per put (the loop and AstDB's commits),
/// also printed.
struct PutCost {
    took_us: i64,
    cpu_us: f64,
}

fn reference_put(n: usize, value: &str) -> PutCost {
    let mut plain = StandIn::builder("bench-ref-put").start();
    let cpu0 = cpu_secs(&plain);
    let out = plain.cli(&format!("database bulkput bench_ref k {n} {value}"));
    let took_us = must_num(&out, "end") - must_num(&out, "start");
    // The commit of the last puts, as the nodes' figures include theirs.
    std::thread::sleep(Duration::from_millis(1500));
    let cpu_us = (cpu_secs(&plain) - cpu0) * 1e6 / n.max(1) as f64;
    plain.stop();
    println!(
        "  ast_db_put alone (a stand-in without the module, empty AstDB): {n} keys in {} ({}), {cpu_us:.2} us CPU per put",
        secs(took_us),
        rate(n, took_us),
    );
    PutCost { took_us, cpu_us }
}

/// Figure 4: bytes exchanged to heal a split that left `diff` keys different in a
/// family of `n` keys.
fn figure_heal(n: usize, diff: usize, timeout: Duration) {
    header(&format!(
        "4. bytes to heal a split: {diff} keys changed on node 1 while node 2 was down, family of {n} keys"
    ));
    let interval = 5000;
    let families = family("bench_heal", interval);
    let node1 = start_node(4, 1, 2, &families);
    let mut node2 = start_node(4, 2, 2, &families);
    wait_all_up(&[&node1, &node2], 1, Duration::from_secs(30));
    node1.cli(&format!("database bulkput bench_heal k {n}"));
    if wait_count(&node2, "bench_heal", n, timeout).is_none() {
        println!("  node 2 never got the {n} keys; skipped");
        return;
    }
    // Idle traffic: what the pair exchanges in sync with nothing changing.
    std::thread::sleep(Duration::from_millis(2 * interval));
    let (i0, o0) = peer_bytes(&node1, 2);
    let idle = Duration::from_millis(2 * interval);
    std::thread::sleep(idle);
    let (i1, o1) = peer_bytes(&node1, 2);
    println!(
        "  in sync, idle for {:.0} s: node 1 sent {} B and received {} B to/from node 2",
        idle.as_secs_f64(),
        o1 - o0,
        i1 - i0
    );

    node2.stop();
    let w = node1.cli(&format!(
        "dialplan bulkset {diff} DB(bench_heal/k{{i}})=healed{{i}}"
    ));
    assert!(w.contains(&format!("Wrote {diff} ")), "{w}");
    // Let node 1's engine take the writes (and fail to send them) before measuring.
    std::thread::sleep(Duration::from_millis(1000));
    let (before_in, before_out) = peer_bytes(&node1, 2);
    println!("  load before node 2 restarts: {}", load());
    let spawned = realtime_us();
    node2.restart();
    let mut healed_at = spawned;
    for i in 0..diff {
        let out = node2.cli(&format!(
            "database waitfor bench_heal k{i} {} healed{i}",
            timeout.as_millis().min(WAIT_SLICE_MS as u128)
        ));
        if out.contains("Timeout") {
            println!("  node 2 did NOT get k{i}: {out}");
            return;
        }
        healed_at = healed_at.max(must_num(&out, " at "));
    }
    let (after_in, after_out) = peer_bytes(&node1, 2);
    let (n2_in, n2_out) = peer_bytes(&node2, 1);
    let total = (after_in - before_in) + (after_out - before_out);
    println!(
        "  node 2 held all {diff} new values {} after its restart",
        secs(healed_at - spawned)
    );
    println!(
        "  node 1 -> node 2: {} B, node 2 -> node 1: {} B (node 1's counters); node 2's own: {n2_out} B out, {n2_in} B in",
        after_out - before_out,
        after_in - before_in
    );
    println!(
        "  => bytes to heal, both ways, restart to converged (incl. handshake): {total} B ({:.1} KiB)   [target < 64 KiB]",
        total as f64 / 1024.0
    );
    std::thread::sleep(Duration::from_millis(interval));
    let (late_in, late_out) = peer_bytes(&node1, 2);
    println!(
        "  {:.0} s later (the next family read and digest round included): {} B both ways since the restart; load now {}",
        interval as f64 / 1000.0,
        (late_in - before_in) + (late_out - before_out),
        load()
    );
}

/// Figure 5: what capture adds to a dialplan DB() write: `dialplan bulkset` into a
/// shared family and into an unshared one, alternately, on node 1. Twice: with its peer
/// running on the same two cores (it receives and applies every shared write, taking
/// CPU from the writer), then with the peer stopped, as when it is another machine.
///
/// Every loop writes a family that sorts after everything already in AstDB, so both
/// kinds append at the end of its key index (SQLite's cheapest insert); a family
/// written in the middle of the index costs more whether shared or not.
fn figure_db_cost(n: usize, rounds: usize) {
    header(&format!(
        "5. DB() write cost, shared vs unshared family: {rounds} rounds of {n} writes each"
    ));
    let node1 = start_node(4, 1, 2, "");
    let mut node2 = Some(start_node(4, 2, 2, ""));
    wait_all_up(
        &[&node1, node2.as_ref().expect("started")],
        1,
        Duration::from_secs(30),
    );
    let mut next_family = 0;
    for setting in [
        "peer running on these two cores",
        "peer stopped (another machine)",
    ] {
        if node2.is_none() {
            node1.wait_for_cli("astdb cluster show status", Duration::from_secs(30), |s| {
                s.contains("0 of 1 peers up")
            });
        }
        // (wall µs, thread CPU µs) per write.
        let mut loop_us = |shared: bool| -> (f64, f64) {
            let family = format!("cost{next_family:03}");
            next_family += 1;
            if shared {
                // Shared at run time, as DB_SHARED does in a dialplan.
                for node in std::iter::once(&node1).chain(node2.as_ref()) {
                    node.cli(&format!("dialplan set DB_SHARED(put,global)={family}"));
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            let out = node1.cli(&format!(
                "dialplan bulkset {n} DB({family}/k{{i}})=value{{i}}"
            ));
            (
                (must_num(&out, "end") - must_num(&out, "start")) as f64 / n as f64,
                must_num(&out, "cpu") as f64 / n as f64,
            )
        };
        let (mut shared, mut plain) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first; the first always has the lower family name.
            if round % 2 == 0 {
                plain.push(loop_us(false));
                shared.push(loop_us(true));
            } else {
                shared.push(loop_us(true));
                plain.push(loop_us(false));
            }
        }
        println!("  {setting}:");
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let show = |v: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
            v.iter()
                .map(|x| format!("{:.2}", pick(x)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        for (what, pick) in [
            ("wall", (|x: &(f64, f64)| x.0) as fn(&(f64, f64)) -> f64),
            ("cpu", |x: &(f64, f64)| x.1),
        ] {
            println!(
                "    {what} per write, rounds (us): unshared {}",
                show(&plain, pick)
            );
            println!(
                "    {what:4}                       shared   {}",
                show(&shared, pick)
            );
            let s = median(shared.iter().map(pick).collect());
            let p = median(plain.iter().map(pick).collect());
            println!(
                "    => {what} per DB() write, median of {rounds}: unshared {p:.2} us, shared {s:.2} us => {:.2}x   [target <= 1.2x]",
                s / p
            );
        }
        node2 = None;
    }
    println!(
        "  (wall: the stand-in's clock around the whole loop: function lookup, AstDB put and,\n  \
         for the shared family, the capture hand-off; cpu: the writing thread's own CPU time\n  \
         in that loop. The module's thread handles each shared write meanwhile, on the other\n  \
         core; with the peer on the same two cores, three busy threads share them. load now {})",
        load()
    );
}

/// `redis-benchmark`, or `REDIS_BENCHMARK` if set.
fn redis_benchmark_bin() -> std::path::PathBuf {
    std::env::var_os("REDIS_BENCHMARK")
        .map_or_else(|| "redis-benchmark".into(), std::path::PathBuf::from)
}

/// Whether `bin --version` runs.
fn runs(bin: &std::path::Path) -> bool {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A field of `INFO replication` (or any INFO section) as a number.
fn info_number(redis: &RedisServer, section: &str, field: &str) -> Option<i64> {
    let info = redis.try_cli(&["INFO", section]).ok()?;
    num_after(&info, &format!("\n{field}:"))
}

/// Figure 7a: Redis's own primary→replica rate here, the yardstick for the transport.
/// The SETs/s as applied by the replica, if it caught up.
fn redis_reference(sets: usize, timeout: Duration) -> Option<f64> {
    println!("  7a. the reference: Redis's own primary -> replica replication");
    let primary = RedisServer::builder().start();
    let replica = RedisServer::builder().replicaof(&primary).start();
    if !redisd::wait_until(Duration::from_secs(30), || {
        replica
            .try_cli(&["INFO", "replication"])
            .is_ok_and(|i| i.contains("master_link_status:up"))
    }) {
        println!("    the replica never linked to the primary; skipped");
        return None;
    }
    let port = primary.port().to_string();
    let n = sets.to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "set",
        "-n",
        &n,
        "-d",
        "32",
        "-r",
        "1000000",
        "-P",
        "16",
        "-q",
    ];
    println!(
        "    command: {} {}  (port {port}: the primary; the replica replicates it on port {})",
        redis_benchmark_bin().display(),
        args.join(" "),
        replica.port()
    );
    let cpu_before = [pid_cpu_secs(primary.pid()), pid_cpu_secs(replica.pid())];
    let start = realtime_us();
    let out = std::process::Command::new(redis_benchmark_bin())
        .args(args)
        .output();
    let replied = realtime_us();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            println!(
                "    redis-benchmark failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            println!("    cannot run redis-benchmark: {e}");
            return None;
        }
    };
    // -q rewrites its progress line with \r; the last piece is the result.
    let said = out
        .rsplit(['\r', '\n'])
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string();
    let target = info_number(&primary, "replication", "master_repl_offset").unwrap_or(-1);
    // The replica's offset counts what it has applied; polled (a redis-cli run each,
    // a few ms) until it reaches the primary's at the benchmark's end.
    let mut applied_at = None;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let at = info_number(&replica, "replication", "slave_repl_offset").unwrap_or(-1);
        if at >= target {
            applied_at = Some(realtime_us());
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let used = [
        pid_cpu_secs(primary.pid()) - cpu_before[0],
        pid_cpu_secs(replica.pid()) - cpu_before[1],
    ];
    println!("    redis-benchmark says: {said}");
    println!(
        "    the primary answered all {sets} SETs in {} ({}, as the client saw them); replication offset {target}",
        secs(replied - start),
        rate(sets, replied - start)
    );
    let result = match applied_at {
        Some(t) => {
            let per_s = sets as f64 / ((t - start).max(1) as f64 / 1e6);
            println!(
                "    the replica had applied them all {} after the start, {} after the last reply",
                secs(t - start),
                secs(t - replied)
            );
            println!(
                "    => Redis primary -> replica: {per_s:.0} SETs/s as applied by the replica (32-byte values, 16 per pipeline, 50 clients)"
            );
            Some(per_s)
        }
        None => {
            println!("    the replica did NOT reach offset {target} within {timeout:?}");
            None
        }
    };
    println!(
        "    CPU: primary {:.2} CPU-s ({:.2} us/SET), replica {:.2} CPU-s ({:.2} us/SET); keys: primary {}, replica {} (-r draws keys at random: repeats overwrite); load now {}",
        used[0],
        used[0] * 1e6 / sets as f64,
        used[1],
        used[1] * 1e6 / sets as f64,
        primary.try_cli(&["DBSIZE"]).unwrap_or_default(),
        replica.try_cli(&["DBSIZE"]).unwrap_or_default(),
        load()
    );
    result
}

/// What carries a cluster of figures 7 and 8 (`transport:nodes` in their lists).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mesh,
    Redis,
    Pjsip,
}

/// What figure 7 or 8 measured for one cluster.
struct TransportRow {
    label: String,
    kind: Kind,
    nodes: u32,
    rate: Option<f64>,
    writer_us: Option<f64>,
    latency: Option<(f64, f64)>,
    new_node_us: Option<i64>,
}

/// Sizes of figure 7 or 8.
struct TransportSizes {
    /// Figure 7: SETs redis-benchmark sends for Redis's own rate.
    sets: usize,
    updates: usize,
    repeat: usize,
    samples: usize,
    /// 0: no new node.
    new_node_keys: usize,
    clusters: String,
}

/// Figure 7: the Redis transport beside the mesh (replicated updates/s to every other
/// node, the writer's CPU per update, write-to-visible latency, a new node's catch-up),
/// and beside Redis's own primary→replica replication on this machine.
fn figure_redis(sizes: &TransportSizes, timeout: Duration, trace: bool) {
    header(&format!(
        "7. the Redis transport: {} updates per run ({} run(s)), {} latency samples, a new node receiving {} keys; clusters {}",
        sizes.updates, sizes.repeat, sizes.samples, sizes.new_node_keys, sizes.clusters
    ));
    if !runs(&redisd::redis_server_bin()) || !runs(&redis_benchmark_bin()) {
        println!(
            "  skipped: {} or {} does not run (Debian: apt-get install redis-server redis-tools)",
            redisd::redis_server_bin().display(),
            redis_benchmark_bin().display()
        );
        return;
    }
    let reference = redis_reference(sizes.sets, timeout);
    let rows = transport_rows(7, sizes, timeout, trace);
    println!("\n  => figure 7, summary (load now {}):", load());
    match reference {
        Some(r) => println!(
            "     Redis's own primary -> replica (redis-benchmark SET, above): {r:.0} SETs/s"
        ),
        None => println!("     Redis's own primary -> replica: no figure"),
    }
    summary_table(&rows, sizes.new_node_keys);
    // The issue's targets, beside the figures.
    let redis_rows: Vec<&TransportRow> = rows.iter().filter(|r| r.kind == Kind::Redis).collect();
    if let (Some(small), Some(big)) = (
        redis_rows.iter().min_by_key(|r| r.nodes),
        redis_rows.iter().max_by_key(|r| r.nodes),
    ) {
        if let (Some(a), Some(b), true) = (small.writer_us, big.writer_us, big.nodes > small.nodes)
        {
            println!(
                "     writer CPU per update over Redis: {} nodes {a:.2} us, {} nodes {b:.2} us ({:.2}x)   [target: does not grow with the number of nodes]",
                small.nodes,
                big.nodes,
                b / a
            );
        }
    }
    let mesh3 = rows.iter().find(|r| r.kind == Kind::Mesh && r.nodes == 3);
    let redis_big = redis_rows.iter().max_by_key(|r| r.nodes);
    if let (Some(m), Some(r)) = (mesh3, redis_big) {
        if let (Some(mr), Some(rr)) = (m.rate, r.rate) {
            println!(
                "     {} nodes over Redis {rr:.0}/s vs the mesh's 3 nodes {mr:.0}/s ({:.2}x)   [target: >= the mesh's 3-node rate]",
                r.nodes,
                rr / mr
            );
        }
    }
    if let (Some(reference), Some(best)) = (
        reference,
        redis_rows.iter().filter_map(|r| r.rate).reduce(f64::max),
    ) {
        println!(
            "     best rate over Redis {best:.0}/s = {:.0}% of Redis's own primary -> replica SETs/s",
            best * 100.0 / reference
        );
    }
}

/// Runs figure `figure` (7 or 8) for each cluster of `sizes.clusters`.
fn transport_rows(
    figure: u32,
    sizes: &TransportSizes,
    timeout: Duration,
    trace: bool,
) -> Vec<TransportRow> {
    let mut rows = Vec::new();
    for spec in sizes
        .clusters
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let Some((kind, count)) = spec.split_once(':') else {
            println!("  '{spec}' is not transport:nodes (mesh:3, redis:8, pjsip:3); skipped");
            continue;
        };
        let (kind, nodes) = match (kind.trim(), count.trim().parse::<u32>()) {
            ("mesh", Ok(n)) if (2..=9).contains(&n) => (Kind::Mesh, n),
            ("pjsip", Ok(n)) if (2..=9).contains(&n) => (Kind::Pjsip, n),
            ("redis", Ok(n)) if n >= 2 => (Kind::Redis, n),
            _ => {
                println!("  '{spec}': want mesh:2..9, pjsip:2..9 or redis:2.. ; skipped");
                continue;
            }
        };
        rows.push(transport_figure_cluster(
            figure, sizes, kind, nodes, timeout, trace,
        ));
    }
    rows
}

/// The table of figures 7 and 8: a line per cluster (the new node's column only if
/// `new_node_keys` > 0).
fn summary_table(rows: &[TransportRow], new_node_keys: usize) {
    let new_node = |v: String| {
        if new_node_keys > 0 {
            format!(" {v:>23}")
        } else {
            String::new()
        }
    };
    println!(
        "     {:<16} {:>11} {:>19} {:>28}{}",
        "cluster",
        "updates/s",
        "writer CPU/update",
        "latency p50/p99, all peers",
        new_node(format!("new node, {new_node_keys} keys"))
    );
    let or_na = |v: Option<String>| v.unwrap_or_else(|| "n/a".into());
    for r in rows {
        println!(
            "     {:<16} {:>11} {:>19} {:>28}{}",
            r.label,
            or_na(r.rate.map(|x| format!("{x:.0}/s"))),
            or_na(r.writer_us.map(|x| format!("{x:.2} us"))),
            or_na(r.latency.map(|(a, b)| format!("{a:.2} / {b:.2} ms"))),
            new_node(or_na(r.new_node_us.map(secs))),
        );
    }
}

/// Figure 7 or 8 for one cluster: latency, updates runs and (if `sizes.new_node_keys`)
/// a new node, each on a cluster (and, over Redis, a redis-server) of its own.
fn transport_figure_cluster(
    figure: u32,
    sizes: &TransportSizes,
    kind: Kind,
    nodes: u32,
    timeout: Duration,
    trace: bool,
) -> TransportRow {
    // A fresh redis-server for each cluster: nothing left from the one before.
    let server = || (kind == Kind::Redis).then(|| RedisServer::builder().start());
    let label = match kind {
        Kind::Mesh => format!("mesh, {nodes} nodes"),
        Kind::Redis => format!("Redis, {nodes} nodes"),
        Kind::Pjsip => format!("pjsip, {nodes} nodes"),
    };
    println!("\n  {figure}b. {label}");

    // Latency: single DB() writes on node 1, each until every other node has it.
    let latency = {
        let srv = server();
        let cluster = cluster_on(srv.as_ref(), kind, nodes);
        let families = family("bench_rlat", 5000);
        let running = cluster.start_first(nodes, "", &families);
        let refs: Vec<&StandIn> = running.iter().collect();
        cluster.wait_up(&refs, Duration::from_secs(30));
        let lat = latency_samples(&running[0], &refs[1..], "bench_rlat", sizes.samples);
        println!(
            "    write-to-visible, single dialplan DB() writes on node 1, {} samples (idle cluster):",
            sizes.samples
        );
        println!(
            "      seen on node 2:          {}",
            latency_line(&lat.first_peer, lat.missed)
        );
        println!(
            "      seen on {}: {}",
            if nodes > 2 {
                format!("all {} peers  ", nodes - 1)
            } else {
                "the peer      ".into()
            },
            latency_line(&lat.all_peers, lat.missed)
        );
        for line in health(&refs) {
            println!("      {line}");
        }
        (!lat.all_peers.is_empty()).then(|| {
            (
                percentile(&lat.all_peers, 0.5) as f64 / 1e3,
                percentile(&lat.all_peers, 0.99) as f64 / 1e3,
            )
        })
    };

    // Replicated updates/s: a dialplan bulkset on node 1 until every other node has it.
    println!(
        "    replicated updates/s: dialplan bulkset of {} DB() writes on node 1, until all {} other nodes hold them",
        sizes.updates,
        nodes - 1
    );
    let cmd = format!(
        "dialplan bulkset {} DB(bench_rup/k{{i}})=v{{i}}",
        sizes.updates
    );
    let mut rates = Vec::new();
    let mut cpus = Vec::new();
    for run in 1..=sizes.repeat {
        let srv = server();
        let cluster = cluster_on(srv.as_ref(), kind, nodes);
        let r = updates_run(
            &cluster,
            sizes.updates,
            "bench_rup",
            5000,
            "",
            &cmd,
            timeout,
            trace,
            run,
        );
        if let Some(rate) = r.rate {
            rates.push(rate);
            cpus.push(r.writer_us);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let rate = median(rates.clone());
    let writer_us = median(cpus);
    if let (Some(r), Some(c)) = (rate, writer_us) {
        println!(
            "    => {label}: {r:.0} replicated updates/s, writer (node 1) {c:.2} CPU-us/update (medians of {} run(s))",
            rates.len()
        );
    }

    // A new node: nodes 1..N-1 hold the family, node N starts empty.
    let new_node_us = (sizes.new_node_keys > 0).then(|| {
        println!(
            "    a new node (node {nodes}) receives {} keys that nodes 1..{} hold:",
            sizes.new_node_keys,
            nodes - 1
        );
        let srv = server();
        let cluster = cluster_on(srv.as_ref(), kind, nodes);
        new_node_run(&cluster, sizes.new_node_keys, timeout, trace)
    });
    TransportRow {
        label,
        kind,
        nodes,
        rate,
        writer_us,
        latency,
        new_node_us: new_node_us.flatten(),
    }
}

/// Figure 7's or 8's cluster of `nodes` (slot 1): over `redis` when given, else the
/// mesh or SIP as `kind` says.
fn cluster_on(redis: Option<&RedisServer>, kind: Kind, nodes: u32) -> Cluster<'_> {
    let direct = if kind == Kind::Pjsip {
        Net::Pjsip
    } else {
        Net::Mesh
    };
    Cluster {
        net: redis.map_or(direct, Net::Redis),
        nodes,
        slot: 1,
    }
}

/// Figure 8: SIP PUBLISH (`transport = pjsip`) beside the mesh, as figure 7 has Redis:
/// replicated updates/s to every other node and write-to-visible latency.
fn figure_pjsip(sizes: &TransportSizes, timeout: Duration, trace: bool) {
    header(&format!(
        "8. SIP PUBLISH (transport = pjsip) beside the mesh: {} updates per run ({} run(s), the median is the figure), {} latency samples; clusters {}",
        sizes.updates, sizes.repeat, sizes.samples, sizes.clusters
    ));
    let rows = transport_rows(8, sizes, timeout, trace);
    println!("\n  => figure 8, summary (load now {}):", load());
    summary_table(&rows, sizes.new_node_keys);
    for sip in rows.iter().filter(|r| r.kind == Kind::Pjsip) {
        let Some(mesh) = rows
            .iter()
            .find(|r| r.kind == Kind::Mesh && r.nodes == sip.nodes)
        else {
            continue;
        };
        if let (Some(sr), Some(mr)) = (sip.rate, mesh.rate) {
            println!(
                "     {} nodes over SIP PUBLISH {sr:.0}/s vs the mesh's {mr:.0}/s ({:.2}x)",
                sip.nodes,
                sr / mr
            );
        }
        if let (Some((_, s99)), Some((_, m99))) = (sip.latency, mesh.latency) {
            println!(
                "     p99 latency to all peers over SIP PUBLISH {s99:.2} ms vs the mesh's {m99:.2} ms ({:.2}x)",
                s99 / m99
            );
        }
    }
}

fn main() {
    // `cargo bench` passes --bench; there is no filtering here.
    let figures = std::env::var("BENCH_FIGURES").unwrap_or_else(|_| "1,2,3,4,5,6,7,8".into());
    let wanted = |f: &str| figures.split(',').any(|x| x.trim() == f);
    let timeout = Duration::from_secs(env_usize("BENCH_TIMEOUT_S", 300) as u64);
    println!(
        "cluster bench: module {}, {} CPUs, load average {}",
        module_so().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    );
    if wanted("1") {
        figure_updates(
            env_usize("BENCH_UPDATES", 100_000),
            env_usize("BENCH_REPEAT", 3).max(1),
            timeout,
            env_usize("BENCH_TRACE", 0) != 0,
        );
    }
    if wanted("2") {
        figure_latency(env_usize("BENCH_SAMPLES", 200));
    }
    if wanted("3") {
        figure_new_node(
            env_usize("BENCH_NEW_NODE_KEYS", 1_000_000),
            timeout,
            env_usize("BENCH_TRACE", 0) != 0,
        );
    }
    if wanted("4") {
        figure_heal(
            env_usize("BENCH_HEAL_KEYS", 100_000),
            env_usize("BENCH_HEAL_DIFF", 10),
            timeout,
        );
    }
    if wanted("5") {
        figure_db_cost(
            env_usize("BENCH_COST_WRITES", 50_000),
            env_usize("BENCH_COST_ROUNDS", 7),
        );
    }
    if wanted("6") {
        figure_capture(env_usize("BENCH_CAPTURE_SAMPLES", 60));
    }
    if wanted("7") {
        figure_redis(
            &TransportSizes {
                sets: env_usize("BENCH_REDIS_SETS", 1_000_000),
                updates: env_usize("BENCH_REDIS_UPDATES", 100_000),
                repeat: env_usize("BENCH_REDIS_REPEAT", 1).max(1),
                samples: env_usize("BENCH_REDIS_SAMPLES", 100),
                new_node_keys: env_usize("BENCH_REDIS_NEW_NODE_KEYS", 1_000_000),
                clusters: std::env::var("BENCH_REDIS_CLUSTERS")
                    .unwrap_or_else(|_| "mesh:3,redis:3,redis:8".into()),
            },
            timeout,
            env_usize("BENCH_TRACE", 0) != 0,
        );
    }
    if wanted("8") {
        figure_pjsip(
            &TransportSizes {
                sets: 0,
                updates: env_usize("BENCH_PJSIP_UPDATES", 100_000),
                repeat: env_usize("BENCH_PJSIP_REPEAT", 3).max(1),
                samples: env_usize("BENCH_PJSIP_SAMPLES", 100),
                new_node_keys: 0,
                clusters: std::env::var("BENCH_PJSIP_CLUSTERS")
                    .unwrap_or_else(|_| "mesh:3,pjsip:3".into()),
            },
            timeout,
            env_usize("BENCH_TRACE", 0) != 0,
        );
    }
}
