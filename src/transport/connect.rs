//! An outgoing TCP connect that gives up when told to stop: std's
//! `connect_timeout` cannot be interrupted (a peer whose address drops
//! packets would hold `Transport::stop` for the whole timeout), so the
//! socket connects non-blocking and is checked in slices of at most 50 ms.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The longest wait between two looks at the connect and the stop flag.
const SLICE: Duration = Duration::from_millis(50);

pub(crate) fn connect(
    addr: SocketAddr,
    timeout: Duration,
    stopped: &dyn Fn() -> bool,
) -> io::Result<TcpStream> {
    // socket2 opens it close-on-exec, as std does.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if in_progress(&e) => wait_connected(&socket, timeout, stopped)?,
        Err(e) => return Err(e),
    }
    socket.set_nonblocking(false)?;
    Ok(TcpStream::from(socket))
}

fn in_progress(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock
}

/// Waits until the non-blocking connect of `socket` completed, failed, timed out or
/// was called off. Completion shows as a peer address; failure as the socket's
/// pending error. Looks soon at first (a loopback or LAN connect is done in well under
/// a millisecond), then every 50 ms, as poll(2) with a 50 ms timeout did before.
fn wait_connected(
    socket: &Socket,
    timeout: Duration,
    stopped: &dyn Fn() -> bool,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(1);
    loop {
        if let Some(e) = socket.take_error()? {
            return Err(e);
        }
        match socket.peer_addr() {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) => return Err(e),
        }
        if stopped() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        std::thread::sleep(wait.min(deadline - now));
        wait = (wait * 2).min(SLICE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::net::TcpListener;

    #[test]
    fn connects_to_a_listener_and_reports_refusal() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(connect(addr, Duration::from_secs(1), &|| false).is_ok());
        drop(l);
        let e = connect(addr, Duration::from_secs(1), &|| false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    /// A listener with a backlog of one, filled: Linux drops further SYNs, so a
    /// connect to it hangs in SYN_SENT like one to an address that drops packets.
    fn full_listener() -> (Socket, SocketAddr, Vec<Socket>) {
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 0))))
            .unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        // Two fillers: the first takes the queue's one place, the second makes sure
        // it has (whether or not the second gets in, nothing after it does).
        let fillers = (0..2)
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                let _ = s.connect_timeout(&SockAddr::from(addr), Duration::from_millis(300));
                s
            })
            .collect();
        (l, addr, fillers)
    }

    #[test]
    fn a_connect_that_hangs_gives_up_when_stopped_or_timed_out() {
        let (_l, addr, _fillers) = full_listener();
        let looks = Cell::new(0);
        let e = connect(addr, Duration::from_secs(30), &|| {
            looks.set(looks.get() + 1);
            looks.get() > 3
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "{e}");
        let e = connect(addr, Duration::from_millis(200), &|| false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }
}
