//! A TCP relay for tests that can cut a link: while cut it forwards nothing
//! (a black hole, as a failed network looks to TCP), and on heal it drops the
//! dead connections so the peers reconnect through it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub struct Relay {
    pub port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<thread::JoinHandle<()>>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 64 * 1024];
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !cut.load(Ordering::Relaxed) && to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

impl Relay {
    /// Listens on 127.0.0.1:`port` and relays to 127.0.0.1:`target`.
    pub fn start(port: u16, target: u16) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("relay port free");
        listener.set_nonblocking(true).unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, s, st) = (Arc::clone(&cut), Arc::clone(&stop), Arc::clone(&streams));
        let target = SocketAddr::from(([127, 0, 0, 1], target));
        let accept = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) =
                            TcpStream::connect_timeout(&target, Duration::from_secs(1))
                        else {
                            continue;
                        };
                        let mut all = st.lock().unwrap();
                        all.push(client.try_clone().unwrap());
                        all.push(server.try_clone().unwrap());
                        drop(all);
                        let (c1, s1, c2, s2) = (
                            Arc::clone(&c),
                            Arc::clone(&s),
                            Arc::clone(&c),
                            Arc::clone(&s),
                        );
                        let (client2, server2) =
                            (client.try_clone().unwrap(), server.try_clone().unwrap());
                        thread::spawn(move || pump(client, server, c1, s1));
                        thread::spawn(move || pump(server2, client2, c2, s2));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Relay {
            port,
            cut,
            stop,
            streams,
            accept: Some(accept),
        }
    }

    /// From now on nothing gets through, in either direction.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// Traffic flows again; connections that lived through the cut are closed.
    pub fn heal(&self) {
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
