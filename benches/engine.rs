//! Engine figures, printed rather than asserted: `cargo bench --bench engine`.
//!
//! - merge throughput: remote changes merged per second on one core (target ≥ 1,000,000);
//! - anti-entropy cost: bytes and round trips to find and repair 10 differing keys among
//!   1,000,000 (target < 64 KiB);
//! - metadata bytes per key in the SQLite file beyond the key and value (target ≤ 100).

use std::time::Instant;

use res_astdb_cluster::engine::codec::encode;
use res_astdb_cluster::engine::{
    Body, Change, Eid, Engine, EngineConfig, Entry, FamilyMeta, Hlc, ItemDelta, ItemId, Message,
    Mode, Output, PeerMeta, PersistDelta, RestoredState, SharedFamily, Version,
};
use res_astdb_cluster::metadata::replica::ReplicaStore;
use rusqlite::Connection;

const FAMILY: &str = "blacklist";
const NOW: u64 = 1_700_000_000_000;
const A: Eid = Eid([2, 0, 0, 0, 0, 1]);
const B: Eid = Eid([2, 0, 0, 0, 0, 2]);

fn key(i: usize) -> String {
    format!("+1555{i:07}")
}

fn engine(local: Eid, node: u32, restored: Option<RestoredState>) -> Engine {
    let mut e = Engine::new(EngineConfig::new(local, node), restored);
    e.share(SharedFamily::from_dialplan(FAMILY, Mode::Global), NOW);
    e
}

fn merge_throughput() {
    const N: usize = 1_000_000;
    const BATCH: usize = 1000;
    let mut e = engine(A, 1, None);
    e.peer_up(B, 2, NOW);
    let batches: Vec<Message> = (0..N / BATCH)
        .map(|b| Message {
            sent: Hlc::from_parts(NOW, 0),
            family: FAMILY.into(),
            mode: Mode::Global,
            body: Body::Changes(
                (0..BATCH)
                    .map(|i| Change {
                        item: ItemId::global(&key((b * BATCH + i) % (N / 2))),
                        entry: Entry {
                            version: Version::new(Hlc::from_parts(NOW, (b % 1000) as u16), B),
                            value: Some("blocked".into()),
                        },
                    })
                    .collect(),
            ),
        })
        .collect();
    let start = Instant::now();
    let mut applied = 0usize;
    for (i, m) in batches.into_iter().enumerate() {
        let out = e.receive(B, m, NOW);
        applied += out.iter().filter(|o| matches!(o, Output::Apply(_))).count();
        if i % 16 == 0 {
            // The driver takes a delta per batch of calls; include its cost.
            std::hint::black_box(e.take_persist_delta());
        }
    }
    std::hint::black_box(e.take_persist_delta());
    let secs = start.elapsed().as_secs_f64();
    println!(
        "merge: {N} remote changes (half new keys, half updates; {applied} applied) in {secs:.3} s = {:.0} changes/s on one core (target >= 1,000,000)",
        N as f64 / secs
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
    let start = Instant::now();
    for (k, e) in changes {
        store.merge(None, &k, e);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "store merge alone (no outputs, no persistence bookkeeping): {:.0} changes/s",
        N as f64 / secs
    );
}

fn restored(n: usize) -> RestoredState {
    RestoredState {
        clock: Hlc::from_parts(NOW, 0),
        families: vec![FamilyMeta {
            name: FAMILY.into(),
            mode: Mode::Global,
            baseline: true,
            horizon: Hlc::ZERO,
        }],
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
    let mut to_b: Vec<Message> = sends(a.peer_up(B, 2, NOW));
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
            next_a.extend(sends(b.receive(A, m, NOW)));
        }
        for m in to_a.drain(..) {
            let n = encode(&m).len();
            bytes += n;
            if !matches!(m.body, Body::Changes(_) | Body::Acks(_)) {
                digest_bytes += n;
            }
            messages += 1;
            next_b.extend(sends(a.receive(B, m, NOW)));
        }
        to_a = next_a;
        to_b = next_b;
    }
    let secs = start.elapsed().as_secs_f64();
    let repaired = (0..DIFF)
        .filter(|i| {
            a.entry(FAMILY, None, &key(i * 97_331 % N))
                .and_then(|e| e.value.as_deref())
                == Some("changed")
        })
        .count();
    println!(
        "anti-entropy: {DIFF} differing keys among {N}: {bytes} bytes in {messages} messages ({digest_bytes} of them digests, summaries and pulls), {legs} one-way legs = {} round trips, {secs:.3} s; repaired {repaired}/{DIFF} (target < 65536 bytes)",
        legs.div_ceil(2)
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
    let path = dir.path().join("astdb_cluster.sqlite3");
    let conn = Connection::open(&path).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    let mut store = ReplicaStore::open_in(conn).expect("schema");
    let items: Vec<ItemDelta> = (0..N)
        .map(|i| ItemDelta {
            family: FAMILY.into(),
            item: ItemId::global(&key(i)),
            entry: Some(Entry {
                version: Version::new(Hlc::from_parts(NOW, (i % 60000) as u16), A),
                value: Some(format!("blocked by rule {}", i % 100)),
            }),
        })
        .collect();
    let payload: usize = items
        .iter()
        .map(|d| {
            d.item.key.len()
                + d.entry
                    .as_ref()
                    .and_then(|e| e.value.as_ref())
                    .map_or(0, String::len)
        })
        .sum();
    let start = Instant::now();
    for chunk in items.chunks(10_000) {
        store
            .write(&PersistDelta {
                clock: Hlc::from_parts(NOW, 0),
                families: vec![FamilyMeta {
                    name: FAMILY.into(),
                    mode: Mode::Global,
                    baseline: true,
                    horizon: Hlc::ZERO,
                }],
                items: chunk.to_vec(),
                ..PersistDelta::default()
            })
            .expect("write");
    }
    let secs = start.elapsed().as_secs_f64();
    let conn = store.into_connection();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")
        .expect("checkpoint");
    drop(conn);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as usize;
    println!(
        "sqlite: {N} keys, file {size} bytes, keys+values {payload} bytes: {:.1} metadata bytes per key (target <= 100); written at {:.0} items/s",
        (size - payload.min(size)) as f64 / N as f64,
        N as f64 / secs
    );
}

fn main() {
    // `cargo test --benches` runs this too; keep that quick.
    if std::env::args().any(|a| a == "--bench") {
        merge_throughput();
        store_merge_throughput();
        anti_entropy_cost();
        metadata_bytes_per_key();
    } else {
        println!("engine bench: run with `cargo bench --bench engine`");
    }
}
