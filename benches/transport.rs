//! Transport throughput over loopback between two transports.
//! Run: `cargo bench --bench transport` (prints figures; no harness).

use crossbeam_channel::{unbounded, Receiver};
use res_astdb_cluster::eid::Eid;
use res_astdb_cluster::transport::{Event, PeerAddr, SendError, Transport, TransportConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn node(n: u32, queue: usize) -> (Transport, Receiver<Event>) {
    let mut c = TransportConfig::new(
        "bench",
        "bench.secret.key.0123",
        n,
        Eid([2, 0, 0, 0, 0, n as u8]),
    );
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.send_queue_bytes = queue;
    let (tx, rx) = unbounded();
    let t = Transport::start(c, tx, Arc::new(|_, _| {})).expect("start");
    (t, rx)
}

/// Sends `count` payloads of `size` bytes from node 1 to node 2 and waits
/// until all arrived. Returns the elapsed time.
fn run(t1: &Transport, rx2: &Receiver<Event>, size: usize, count: usize) -> Duration {
    let start = Instant::now();
    let payload = vec![0x5au8; size];
    let receiver = {
        let rx2 = rx2.clone();
        std::thread::spawn(move || {
            let mut got = 0;
            while got < count {
                match rx2.recv_timeout(Duration::from_secs(30)) {
                    Ok(Event::Received { payload, .. }) => {
                        assert_eq!(payload.len(), size);
                        got += 1;
                    }
                    Ok(_) => {}
                    Err(_) => panic!("stalled after {got} of {count}"),
                }
            }
        })
    };
    for _ in 0..count {
        loop {
            match t1.send(2, payload.clone()) {
                Ok(()) => break,
                // The queue is full: the network is the limit, wait for it.
                Err(SendError::QueueFull) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    }
    receiver.join().unwrap();
    start.elapsed()
}

fn report(label: &str, size: usize, count: usize, d: Duration) {
    let s = d.as_secs_f64();
    println!(
        "{label:<28} {count:>9} x {size:>6} B  {:>8.3} s  {:>11.0} msg/s  {:>8.1} MB/s",
        s,
        count as f64 / s,
        (size * count) as f64 / s / 1e6
    );
}

fn main() {
    let (t2, rx2) = node(2, 64 << 20);
    let (t1, _rx1) = node(1, 64 << 20);
    t2.set_peers(vec![PeerAddr {
        node: 1,
        name: "n1".into(),
        address: "127.0.0.1:9".into(),
    }]);
    t1.set_peers(vec![PeerAddr {
        node: 2,
        name: "n2".into(),
        address: t2.local_addr().to_string(),
    }]);
    loop {
        match rx2.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::PeerUp { .. }) => break,
            Ok(_) => {}
            Err(_) => panic!("no connection"),
        }
    }
    let _ = run(&t1, &rx2, 200, 100_000); // warm-up
    for (label, size, count) in [
        ("200-byte updates", 200, 1_000_000),
        ("64 KiB payloads", 64 * 1024, 3_000),
        ("100 MB as 256 KiB batches", 256 * 1024, 400),
        ("100 MB as 4 MiB batches", 4 << 20, 25),
    ] {
        let d = run(&t1, &rx2, size, count);
        report(label, size, count, d);
    }
    let st = &t1.peers()[0];
    println!(
        "node 1 -> 2: {} bytes out in {} records, {} dropped sends",
        st.bytes_out, st.frames_out, st.dropped_sends
    );
    t1.stop();
    t2.stop();
}
