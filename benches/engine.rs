//! Engine figures, printed rather than asserted: `cargo bench --bench engine`.
//!
//! - merge throughput: remote changes merged per second on one core (target ≥ 1,000,000);
//! - end to end: merge, persist delta and append it to the replica log (target ≥ 100,000/s);
//! - anti-entropy cost: bytes and round trips to find and repair 10 differing keys among
//!   1,000,000 (target < 64 KiB);
//! - metadata bytes per key in the compacted replica log beyond the key and value
//!   (target ≤ 100), with the log's write, read-back and compaction times.

use std::time::Instant;

use res_astdb_cluster::engine::codec::encode;
use res_astdb_cluster::engine::{
    Body, Change, Eid, Engine, EngineConfig, Entry, FamilyMeta, Hlc, ItemDelta, ItemId, Message,
    Mode, Output, PeerMeta, PersistDelta, RestoredState, SharedFamily, Version,
};
use res_astdb_cluster::metadata::replica::{self, ReplicaLog};
use res_astdb_cluster::metadata::{self, Metadata};

const FAMILY: &str = "blacklist";
const NOW: u64 = 1_700_000_000_000;
const A: Eid = Eid([2, 0, 0, 0, 0, 1]);
const B: Eid = Eid([2, 0, 0, 0, 0, 2]);

/// CPU time of this thread: the throughput figures are per core, and the machine may be
/// shared, so wall time is printed too but CPU time is the figure.
fn cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn key(i: usize) -> String {
    format!("+1555{i:07}")
}

fn engine(local: Eid, node: u32, restored: Option<RestoredState>) -> Engine {
    let mut e = Engine::new(EngineConfig::new(local, node), restored);
    e.share(SharedFamily::from_dialplan(FAMILY, Mode::Global), NOW);
    e
}

/// `n` remote changes from B in messages of `batch`: the first half of them new keys,
/// the second half updates of the same keys.
fn change_batches(n: usize, batch: usize) -> Vec<Message> {
    (0..n / batch)
        .map(|b| Message {
            sent: Hlc::from_parts(NOW, 0),
            family: FAMILY.into(),
            mode: Mode::Global,
            body: Body::Changes(
                (0..batch)
                    .map(|i| Change {
                        item: ItemId::global(&key((b * batch + i) % (n / 2))),
                        entry: Entry {
                            version: Version::new(Hlc::from_parts(NOW, (b % 1000) as u16), B),
                            value: Some("blocked".into()),
                        },
                    })
                    .collect(),
            ),
        })
        .collect()
}

fn merge_throughput() {
    const N: usize = 1_000_000;
    const BATCH: usize = 1000;
    let mut e = engine(A, 1, None);
    e.peer_up(B, 2, NOW);
    let batches = change_batches(N, BATCH);
    let start = Instant::now();
    let cpu = cpu_secs();
    let mut applied = 0usize;
    let mut take = |e: &mut Engine| {
        let batch = e.take_batch();
        applied += batch
            .outputs
            .iter()
            .filter(|o| matches!(o, Output::Apply(_)))
            .count();
        std::hint::black_box(&batch.save);
        e.recycle(batch.outputs);
    };
    for (i, m) in batches.into_iter().enumerate() {
        e.receive(B, m, NOW);
        if i % 16 == 0 {
            // The driver takes a batch per group of calls; include its cost.
            take(&mut e);
        }
    }
    take(&mut e);
    let cpu = cpu_secs() - cpu;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "receive: {N} remote changes (half new keys, half updates; {applied} applied) merged with their outputs and persist deltas in {cpu:.3} s CPU = {:.0} changes/s on one core (target >= 1,000,000; wall {secs:.3} s)",
        N as f64 / cpu
    );
}

/// What the module does per received batch: merge, take the batch, append its state to
/// the replica log (before the Applies would be executed).
fn end_to_end_throughput() {
    const N: usize = 1_000_000;
    const BATCH: usize = 512;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut meta, _) =
        Metadata::open(&dir.path().join(metadata::FILE_NAME)).expect("open metadata");
    let mut e = engine(A, 1, None);
    e.peer_up(B, 2, NOW);
    meta.replica.save(&e.take_batch().save).expect("write");
    let batches = change_batches(N, BATCH);
    let start = Instant::now();
    let cpu = cpu_secs();
    let mut write_cpu = 0.0;
    for m in batches {
        e.receive(B, m, NOW);
        let batch = e.take_batch();
        let w = cpu_secs();
        meta.replica.save(&batch.save).expect("write");
        write_cpu += cpu_secs() - w;
        e.recycle(std::hint::black_box(batch.outputs));
    }
    // The Applies of the last batch are confirmed by the next one.
    meta.replica.save(&e.take_batch().save).expect("write");
    let cpu = cpu_secs() - cpu;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "end to end: {N} remote changes in messages of {BATCH}, each merged, its batch taken and its state appended to the replica log: {cpu:.3} s CPU = {:.0} changes/s ({:.0}% of it in replica::write; target >= 100,000; wall {secs:.3} s)",
        N as f64 / cpu,
        100.0 * write_cpu / cpu
    );
}

fn store_merge_throughput() {
    use res_astdb_cluster::engine::store::ItemStore;
    const N: usize = 1_000_000;
    let changes: Vec<(String, Entry)> = (0..N)
        .map(|i| {
            (
                key(i % (N / 2)),
                Entry {
                    version: Version::new(Hlc::from_parts(NOW, (i / (N / 2)) as u16), B),
                    value: Some("blocked".into()),
                },
            )
        })
        .collect();
    let mut store = ItemStore::new();
    let cpu = cpu_secs();
    for (k, e) in changes {
        store.merge(None, &k, e);
    }
    let cpu = cpu_secs() - cpu;
    println!(
        "store merge alone (no outputs, no persistence bookkeeping): {:.0} changes/s (CPU time)",
        N as f64 / cpu
    );
}

/// The benches' one family, as persisted.
fn family_meta() -> FamilyMeta {
    FamilyMeta {
        name: FAMILY.into(),
        mode: Mode::Global,
        baseline: true,
        horizon: Hlc::ZERO,
    }
}

fn restored(n: usize) -> RestoredState {
    RestoredState {
        clock: Hlc::from_parts(NOW, 0),
        families: vec![family_meta()],
        items: (0..n)
            .map(|i| {
                (
                    FAMILY.to_string(),
                    ItemId::global(&key(i)),
                    Entry {
                        version: Version::new(Hlc::from_parts(NOW - 1000, (i % 60000) as u16), A),
                        value: Some("blocked".into()),
                    },
                )
            })
            .collect(),
        peers: vec![PeerMeta {
            eid: A,
            node: 1,
            stale_below: Vec::new(),
        }],
        applies_unconfirmed: Vec::new(),
    }
}

fn anti_entropy_cost() {
    const N: usize = 1_000_000;
    const DIFF: usize = 10;
    let mut a = engine(A, 1, Some(restored(N)));
    let mut b = engine(B, 2, Some(restored(N)));
    // B knows A (restored) but its link is not up, so B's changes wait for anti-entropy.
    for i in 0..DIFF {
        b.local_change(FAMILY, &key(i * 97_331 % N), Some("changed"), NOW);
    }
    let start = Instant::now();
    a.peer_up(B, 2, NOW);
    let mut to_b: Vec<Message> = sends(a.take_batch().outputs);
    let mut to_a: Vec<Message> = Vec::new();
    let (mut bytes, mut digest_bytes, mut messages, mut legs) = (0usize, 0usize, 0usize, 0usize);
    while !to_b.is_empty() || !to_a.is_empty() {
        legs += 1;
        let mut next_a = Vec::new();
        let mut next_b = Vec::new();
        for m in to_b.drain(..) {
            let n = encode(&m).len();
            bytes += n;
            if !matches!(m.body, Body::Changes(_) | Body::Acks(_)) {
                digest_bytes += n;
            }
            messages += 1;
            b.receive(A, m, NOW);
            next_a.extend(sends(b.take_batch().outputs));
        }
        for m in to_a.drain(..) {
            let n = encode(&m).len();
            bytes += n;
            if !matches!(m.body, Body::Changes(_) | Body::Acks(_)) {
                digest_bytes += n;
            }
            messages += 1;
            a.receive(B, m, NOW);
            next_b.extend(sends(a.take_batch().outputs));
        }
        to_a = next_a;
        to_b = next_b;
    }
    let secs = start.elapsed().as_secs_f64();
    let repaired = (0..DIFF)
        .filter(|i| {
            a.entry(FAMILY, None, &key(i * 97_331 % N))
                .and_then(|e| e.value)
                .as_deref()
                == Some("changed")
        })
        .count();
    println!(
        "anti-entropy: {DIFF} differing keys among {N}: {bytes} bytes in {messages} messages ({digest_bytes} of them digests, summaries and pulls), {legs} one-way legs = {} round trips, {secs:.3} s; repaired {repaired}/{DIFF} (target < 65536 bytes)",
        legs.div_ceil(2)
    );
}

/// A new node's catch-up inside the engines: A holds 1,000,000 keys, B holds none and
/// has looked at its empty family. Every message goes through the codec (encode on the
/// sender's side, decode on the receiver's), as over the network. B also does the rest of
/// a node's module thread: it appends each batch's save to a replica log and turns each
/// apply into the C strings an AstDB writer gets (the writer itself and the wire are not
/// in it). Prints the CPU time each side spends, and how much of B's went into taking the
/// batches (building the state to save), saving them and handing the applies over.
fn catch_up_cost() {
    use res_astdb_cluster::engine::codec::decode;
    use res_astdb_cluster::engine::DbOp;
    const N: usize = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _, _) = ReplicaLog::open(&dir.path().join(replica::FILE_NAME)).expect("open");
    let mut a = engine(A, 1, Some(restored(N)));
    let mut b = engine(B, 2, None);
    b.local_snapshot(FAMILY, Vec::new(), NOW);
    let (mut cpu_a, mut cpu_b) = (0.0f64, 0.0f64);
    let (mut take_a, mut take_b, mut save_b, mut hand_b) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut scratch: Vec<u8> = Vec::new();
    // Takes the engine's batch (its CPU time counted in `cpu` and `take`), saves it and
    // hands its applies over when `log` is given (counted in `save` and `hand`), and
    // encodes its sends.
    let mut wire = |e: &mut Engine,
                    cpu: &mut f64,
                    take: &mut f64,
                    log: Option<(&mut ReplicaLog, &mut f64, &mut f64)>|
     -> Vec<Vec<u8>> {
        let t = cpu_secs();
        let mut batch = e.take_batch();
        let taken = cpu_secs();
        *take += taken - t;
        if let Some((log, save, hand)) = log {
            log.write(&batch.save).expect("write");
            drop(std::mem::take(&mut batch.save));
            let saved = cpu_secs();
            *save += saved - taken;
            batch.outputs.retain(|o| match o {
                Output::Apply(DbOp::Put { family, key, value }) => {
                    scratch.clear();
                    for s in [family, key, value] {
                        scratch.extend_from_slice(s.as_bytes());
                        scratch.push(0);
                    }
                    std::hint::black_box(&scratch);
                    false
                }
                Output::Apply(DbOp::Delete { .. }) => false,
                _ => true,
            });
            *hand += cpu_secs() - saved;
        }
        std::hint::black_box(&batch.save);
        let frames = sends(batch.outputs).iter().map(encode).collect();
        *cpu += cpu_secs() - t;
        frames
    };
    let start = Instant::now();
    let t = cpu_secs();
    a.peer_up(B, 2, NOW);
    cpu_a += cpu_secs() - t;
    let mut to_b = wire(&mut a, &mut cpu_a, &mut take_a, None);
    let t = cpu_secs();
    b.peer_up(A, 1, NOW);
    cpu_b += cpu_secs() - t;
    let mut to_a = wire(
        &mut b,
        &mut cpu_b,
        &mut take_b,
        Some((&mut log, &mut save_b, &mut hand_b)),
    );
    let (mut bytes, mut legs) = (0usize, 0usize);
    // A queued push makes the deadline now.
    let pushing = |a: &Engine| a.next_deadline().is_some_and(|at| at <= NOW);
    while !to_b.is_empty() || !to_a.is_empty() || pushing(&a) {
        if pushing(&a) {
            let t = cpu_secs();
            a.tick(NOW);
            cpu_a += cpu_secs() - t;
            to_b.extend(wire(&mut a, &mut cpu_a, &mut take_a, None));
        }
        legs += 1;
        let (mut next_a, mut next_b) = (Vec::new(), Vec::new());
        for frame in to_b.drain(..) {
            bytes += frame.len();
            let t = cpu_secs();
            b.receive(A, decode(&frame).expect("decode"), NOW);
            cpu_b += cpu_secs() - t;
            next_a.extend(wire(
                &mut b,
                &mut cpu_b,
                &mut take_b,
                Some((&mut log, &mut save_b, &mut hand_b)),
            ));
        }
        for frame in to_a.drain(..) {
            bytes += frame.len();
            let t = cpu_secs();
            a.receive(B, decode(&frame).expect("decode"), NOW);
            cpu_a += cpu_secs() - t;
            next_b.extend(wire(&mut a, &mut cpu_a, &mut take_a, None));
        }
        to_a = next_a;
        to_b = next_b;
    }
    let held = b.family_stats(FAMILY).map_or(0, |s| s.keys);
    println!(
        "catch-up: a new node gets {held} of {N} keys: sender {:.2} CPU-s ({:.2} us/key; {take_a:.2} s of it taking batches), receiver {:.2} CPU-s ({:.2} us/key; {take_b:.2} s of it taking batches, {save_b:.2} s saving them, {hand_b:.2} s handing the applies over), {bytes} bytes, {legs} one-way legs, {:.2} s wall",
        cpu_a,
        cpu_a * 1e6 / N as f64,
        cpu_b,
        cpu_b * 1e6 / N as f64,
        start.elapsed().as_secs_f64()
    );
}

fn sends(out: Vec<Output>) -> Vec<Message> {
    out.into_iter()
        .filter_map(|o| match o {
            Output::Send { msg, .. } => Some(msg),
            _ => None,
        })
        .collect()
}

fn metadata_bytes_per_key() {
    const N: usize = 200_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(replica::FILE_NAME);
    let (mut log, _, _) = ReplicaLog::open(&path).expect("open");
    let items: Vec<ItemDelta> = (0..N)
        .map(|i| {
            ItemDelta::new(
                FAMILY,
                &ItemId::global(&key(i)),
                Some(&Entry {
                    version: Version::new(Hlc::from_parts(NOW, (i % 60000) as u16), A),
                    value: Some(format!("blocked by rule {}", i % 100).into()),
                }),
            )
        })
        .collect();
    let payload: usize = items
        .iter()
        .map(|d| {
            d.item.key.len()
                + d.state
                    .as_ref()
                    .and_then(|s| s.value.as_deref())
                    .map_or(0, str::len)
        })
        .sum();
    let start = Instant::now();
    for chunk in items.chunks(10_000) {
        log.write(&PersistDelta {
            clock: Hlc::from_parts(NOW, 0),
            families: vec![family_meta()],
            items: chunk.to_vec(),
            ..PersistDelta::default()
        })
        .expect("write");
    }
    let secs = start.elapsed().as_secs_f64();
    let written = log.len() as usize;
    let start = Instant::now();
    let state = log.load().expect("load");
    let load_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    log.replace_with(&state).expect("compact");
    let compact_secs = start.elapsed().as_secs_f64();
    let size = log.len() as usize;
    println!(
        "replica log: {N} keys written at {:.0} items/s ({written} bytes); read back in {load_secs:.3} s; rewritten (compaction) in {compact_secs:.3} s to {size} bytes, keys+values {payload} bytes: {:.1} metadata bytes per key (target <= 100)",
        N as f64 / secs,
        (size - payload.min(size)) as f64 / N as f64,
    );
}

fn main() {
    // `cargo test --benches` runs this too; keep that quick.
    // `cargo bench --bench engine -- NAME` runs only the figures whose name contains NAME.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("engine bench: run with `cargo bench --bench engine`");
        return;
    }
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let figures: [(&str, fn()); 6] = [
        ("receive", merge_throughput),
        ("store_merge", store_merge_throughput),
        ("end_to_end", end_to_end_throughput),
        ("anti_entropy", anti_entropy_cost),
        ("catch_up", catch_up_cost),
        ("disk_bytes", metadata_bytes_per_key),
    ];
    for (name, run) in figures {
        if filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())) {
            run();
        }
    }
}
