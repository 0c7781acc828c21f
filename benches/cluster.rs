//! End-to-end cluster figures: stand-in Asterisk processes (`asterisk-stubs/`) with
//! the release-built module, on loopback. Prints figures beside their targets;
//! asserts no timing.
//!
//! Run: `cargo bench --bench cluster`. Sizes come from the environment:
//!
//! | variable | default | figure |
//! |---|---|---|
//! | `BENCH_FIGURES` | `1,2,3,4,5,6` | which figures to run |
//! | `BENCH_UPDATES` | 100000 | 1: keys written per path |
//! | `BENCH_UPDATE_PATHS` | `cli,dialplan,events` | 1: which writer paths (`events`: the dialplan path with change events off, on, and one per key) |
//! | `BENCH_REPEAT` | 3 | 1: runs per path (the median is the figure) |
//! | `BENCH_SAMPLES` | 200 | 2: latency samples |
//! | `BENCH_NEW_NODE_KEYS` | 1000000 | 3: keys a new node receives |
//! | `BENCH_HEAL_KEYS` | 100000 | 4: family size |
//! | `BENCH_HEAL_DIFF` | 10 | 4: keys changed during the split |
//! | `BENCH_COST_WRITES` | 50000 | 5: DB() writes per timed loop |
//! | `BENCH_COST_ROUNDS` | 7 | 5: loops per family |
//! | `BENCH_CAPTURE_SAMPLES` | 60 | 6: CLI / AMI writes timed to the peer |
//! | `BENCH_TIMEOUT_S` | 300 | how long any one wait may take |
//! | `BENCH_TRACE` | 0 | 1: figures 1 and 3 print the nodes' counters as they go |
//!
//! Writes go through test-only stand-in commands (see asterisk-stubs/README.md):
//! `database bulkput` (ast_db_put in a loop: the module finds these at the
//! family's `sync_interval` read, as for any non-dialplan writer) and `dialplan
//! bulkset` (DB() through the function registry: the module's capture wrapper
//! sees each write at once). Arrival is timed inside the receiving process by
//! `database waitcount` / `database waitfor`; every time is CLOCK_REALTIME in µs,
//! so figures from different processes on this machine compare directly.

#[path = "../tests/standin/mod.rs"]
mod standin;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

fn conf(node: u32, nodes: u32, base: u16, general: &str, families: &str) -> String {
    let all: Vec<u32> = (1..=nodes).collect();
    standin::cluster_conf_with("bench.cluster", SECRET, node, &all, base, general, families)
}

fn family(name: &str, interval_ms: u64) -> String {
    format!("\n[{name}]\ntype = family\nmode = global\nsync_interval = {interval_ms}\n")
}

fn start_node(slot: u16, node: u32, nodes: u32, families: &str) -> StandIn {
    start_node_with(slot, node, nodes, "", families)
}

/// A node whose [general] also holds `general` (option lines).
fn start_node_with(slot: u16, node: u32, nodes: u32, general: &str, families: &str) -> StandIn {
    StandIn::builder(&format!("bench{slot}n{node}"))
        .eid(&format!("02:00:00:00:{slot:02x}:{node:02x}"))
        .conf_file(
            "astdb_cluster.conf",
            &conf(node, nodes, base_port(slot), general, families),
        )
        .module_path(module_so())
        .preload(&["res_astdb_cluster.so"])
        .start()
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

/// "Family reads: N (M more skipped ...)" from `astdb cluster show status`.
fn family_reads(node: &StandIn) -> (i64, i64) {
    let status = node.cli("astdb cluster show status");
    let skipped = status
        .find("Family reads:")
        .and_then(|at| num_after(&status[at..], "("))
        .unwrap_or(-1);
    (num_after(&status, "Family reads:").unwrap_or(-1), skipped)
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

/// CPU seconds (user + system, all threads) the stand-in process has used so far.
fn cpu_secs(node: &StandIn) -> f64 {
    let Some(pid) = node.pid() else { return 0.0 };
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
    nodes
        .iter()
        .zip(before)
        .enumerate()
        .map(|(i, (node, b))| {
            let used = cpu_secs(node) - b;
            format!(
                "node {}: {used:.2} CPU-s ({:.1} us/update)",
                i + 1,
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
    for (what, short, fam, interval, general, cmd) in paths {
        if !wanted.split(',').any(|w| w.trim() == short) {
            continue;
        }
        println!("  {what}");
        let mut rates = Vec::new();
        for run in 1..=repeat {
            if let Some(r) = updates_run(n, fam, interval, general, &cmd, timeout, trace, run) {
                rates.push(r);
            }
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

/// One run of figure 1 on a fresh cluster; the rate if both peers got every key.
#[allow(clippy::too_many_arguments)]
fn updates_run(
    n: usize,
    fam: &str,
    interval: u64,
    general: &str,
    cmd: &str,
    timeout: Duration,
    trace: bool,
    run: usize,
) -> Option<f64> {
    let families = family(fam, interval);
    let nodes: Vec<StandIn> = (1..=3)
        .map(|i| start_node_with(1, i, 3, general, &families))
        .collect();
    let refs: Vec<&StandIn> = nodes.iter().collect();
    wait_all_up(&refs, 2, Duration::from_secs(30));
    let done = std::sync::atomic::AtomicBool::new(false);
    let cpu_before: Vec<f64> = nodes.iter().map(cpu_secs).collect();
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
    let loop_cpu: Vec<f64> = nodes.iter().map(loop_cpu_secs).collect();
    let start = must_num(&write, "start");
    let end = must_num(&write, "end");
    let held: Vec<String> = arrivals
        .iter()
        .enumerate()
        .map(|(i, a)| match a {
            Some(t) => format!("node {} all keys at {}", i + 2, secs(t - start)),
            None => format!(
                "node {} did NOT get all keys within {timeout:?} (has {})",
                i + 2,
                count(&nodes[i + 1], fam)
            ),
        })
        .collect();
    println!(
        "    run {run}: {n} writes on node 1 in {} ({}, the stand-in's own rate); {}",
        secs(end - start),
        rate(n, end - start),
        held.join(", ")
    );
    let result = if arrivals.iter().all(Option::is_some) {
        let last = arrivals.iter().flatten().max().copied().unwrap_or(end);
        println!(
            "      {} replicated updates/s (first write to both peers complete); the peers needed {} after the last write",
            rate(n, last - start),
            secs(last - end)
        );
        Some(n as f64 / ((last - start).max(1) as f64 / 1e6))
    } else {
        None
    };
    println!(
        "      CPU used, first write to last arrival (incl. the test commands' own polling): {}; load now {}",
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
    println!(
        "      AMI events raised (after Stasis delivered everything queued): {}",
        events.join(", ")
    );
    result
}

/// CPU seconds the module's own thread has used so far.
fn loop_cpu_secs(node: &StandIn) -> f64 {
    let Some(pid) = node.pid() else { return 0.0 };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "astdb-cl-node")
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|stat| stat_cpu_secs(&stat))
        .sum()
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

/// Figure 2: write-to-visible latency of single dialplan DB() writes under light load.
fn figure_latency(samples: usize) {
    header(&format!(
        "2. write-to-visible latency, single dialplan DB() writes on node 1 seen on node 2, {samples} samples"
    ));
    let families = family("bench_lat", 5000);
    let nodes: Vec<StandIn> = (1..=3).map(|i| start_node(2, i, 3, &families)).collect();
    let refs: Vec<&StandIn> = nodes.iter().collect();
    wait_all_up(&refs, 2, Duration::from_secs(30));
    // Warm-up: the first write after start may pay for lazy set-up.
    nodes[0].cli("dialplan set DB(bench_lat/warmup)=1");
    nodes[1].cli("database waitfor bench_lat warmup 10000");

    let mut lat = Vec::new();
    let mut missed = 0;
    let mut lead = Duration::from_millis(30);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..samples {
        let key = format!("s{i}");
        let (visible, write) = std::thread::scope(|s| {
            let w = s.spawn(|| nodes[1].cli(&format!("database waitfor bench_lat {key} 10000")));
            // Let the waiter's -rx connect and take its first look before the write; the
            // random part keeps the samples from locking to the module's 100 ms tick.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            std::thread::sleep(lead + Duration::from_micros(rng % 100_000));
            let write = nodes[0].cli(&format!("dialplan bulkset 1 DB(bench_lat/{key})=x{i}"));
            (w.join().unwrap(), write)
        });
        if visible.contains("Visible") {
            lat.push(must_num(&visible, " at ") - must_num(&write, "start"));
        } else {
            // The waiter started after the value arrived (or timed out): not a sample.
            missed += 1;
            lead += Duration::from_millis(10);
        }
    }
    lat.sort_unstable();
    if lat.is_empty() {
        println!("  no samples ({missed} missed)");
        return;
    }
    let mean = lat.iter().sum::<i64>() as f64 / lat.len() as f64;
    println!(
        "  p50 {:.2} ms, p99 {:.2} ms, min {:.2} ms, max {:.2} ms, mean {:.2} ms ({} samples, {missed} discarded)",
        percentile(&lat, 0.5) as f64 / 1e3,
        percentile(&lat, 0.99) as f64 / 1e3,
        lat[0] as f64 / 1e3,
        lat[lat.len() - 1] as f64 / 1e3,
        mean / 1e3,
        lat.len()
    );
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
        std::thread::sleep(Duration::from_millis(500));
        let s1 = node1.cli("astdb cluster show status");
        let s2 = node2.cli("astdb cluster show status");
        println!(
            "      t={:5.2}s node 1: changes sent {} | node 2: received {}, applied {}; CPU-s node 1 {:.2}, node 2 {:.2}",
            (realtime_us() - spawned) as f64 / 1e6,
            num_after(&s1, "Changes sent / received:").unwrap_or(-1),
            pair_after(&s2, "Changes sent / received:").1,
            num_after(&s2, "Remote changes applied:").unwrap_or(-1),
            cpu_secs(node1),
            cpu_secs(node2),
        );
    }
}

/// Figure 3: how long a node that starts empty takes to hold a family of `n` keys.
fn figure_new_node(n: usize, timeout: Duration, trace: bool) {
    header(&format!("3. a new node receives a {n}-key global family"));
    let families = family("bench_big", 5000);
    let node1 = start_node(3, 1, 2, &families);
    let rss1_before = rss_kib(&node1, "VmRSS:");
    let out = node1.cli(&format!("database bulkput bench_big k {n}"));
    let took = must_num(&out, "end") - must_num(&out, "start");
    println!(
        "  node 1: {n} keys written by bulkput in {} ({})",
        secs(took),
        rate(n, took)
    );
    // Wait until the module has read them (its 5 s family read), so node 2 gets them
    // from the engine and not from a race with the first read.
    let t = Instant::now();
    let deadline = t + timeout;
    loop {
        let seen = status_number(&node1, "Local changes:");
        if seen >= n as i64 {
            println!(
                "  node 1's module took them in (local changes {seen}) {:.1} s after the bulkput",
                t.elapsed().as_secs_f64()
            );
            break;
        }
        if Instant::now() > deadline {
            println!("  node 1's module did not take the keys in (local changes {seen}); skipped");
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "  node 1 memory: RSS {} -> {} KiB once the module holds them ({:.0} B/key; peak RSS {} KiB)",
        rss1_before,
        rss_kib(&node1, "VmRSS:"),
        per_key(rss_kib(&node1, "VmRSS:") - rss1_before, n),
        rss_kib(&node1, "VmHWM:")
    );
    // What holding the family costs node 1 alone: its reads at the 5 s interval, skipped
    // while AstDB has committed nothing.
    let idle = Duration::from_secs(10);
    let c0 = cpu_secs(&node1);
    let reads0 = family_reads(&node1);
    std::thread::sleep(idle);
    let reads1 = family_reads(&node1);
    println!(
        "  node 1 alone, nothing changing: {:.2} CPU-s in {:.0} s; family reads {} done, {} skipped (AstDB unchanged)",
        cpu_secs(&node1) - c0,
        idle.as_secs_f64(),
        reads1.0 - reads0.0,
        reads1.1 - reads0.1
    );
    println!("  load before node 2 starts: {}", load());
    let cpu1 = cpu_secs(&node1);
    let spawned = realtime_us();
    let node2 = start_node(3, 2, 2, &families);
    let answering = realtime_us();
    let rss2_before = rss_kib(&node2, "VmRSS:");
    let done = std::sync::atomic::AtomicBool::new(false);
    let arrived = std::thread::scope(|s| {
        if trace {
            let (node1, node2, done) = (&node1, &node2, &done);
            s.spawn(move || catch_up_progress(node1, node2, spawned, done));
        }
        let arrived = wait_count(&node2, "bench_big", n, timeout);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        arrived
    });
    println!(
        "  CPU used from node 2's spawn to the last key: {}",
        cpu_line(&[&node1, &node2], &[cpu1, 0.0], n)
    );
    match arrived {
        Some(done) => {
            println!(
                "  node 2 started (control socket answering after {}), holds all {n} keys {} after spawn",
                secs(answering - spawned),
                secs(done - spawned)
            );
            println!(
                "  => new node receives {n} keys in {} ({})   [target < 10 s for 1000000]",
                secs(done - spawned),
                rate(n, done - spawned)
            );
        }
        None => println!(
            "  node 2 did NOT get all keys within {timeout:?}: has {}",
            count(&node2, "bench_big")
        ),
    }
    println!(
        "  node 2 memory: RSS {} -> {} KiB after the catch-up ({:.0} B/key; peak RSS {} KiB)",
        rss2_before,
        rss_kib(&node2, "VmRSS:"),
        per_key(rss_kib(&node2, "VmRSS:") - rss2_before, n),
        rss_kib(&node2, "VmHWM:")
    );
    let (bin, bout) = peer_bytes(&node2, 1);
    println!(
        "  node 2's counters for node 1: {bin} bytes in, {bout} bytes out ({:.1} B/key in); load now {}",
        bin as f64 / n as f64,
        load()
    );
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

fn main() {
    // `cargo bench` passes --bench; there is no filtering here.
    let figures = std::env::var("BENCH_FIGURES").unwrap_or_else(|_| "1,2,3,4,5,6".into());
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
}
