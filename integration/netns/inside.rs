//! The test process's own sockets inside a testbed host's namespace: a TCP service behind a
//! NAT, a client of a node's forwarded port, a UDP socket for an in-process node.
//!
//! A socket belongs to the network namespace of the thread that created it, and keeps it
//! whichever thread uses it later. So [`within`] runs a closure on a fresh thread that first
//! joins the namespace (`setns`); what it creates there stays there, and the test's own
//! threads are never moved.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use super::testbed::Host;

/// Runs `f` on a thread inside `host`'s network namespace and returns its result.
pub fn within<T, F>(host: &Host, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = format!("/var/run/netns/{}", host.ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on an open namespace file only changes this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// A TCP echo server on `host` at `port` (all its addresses): it echoes what it reads and
/// closes its side when the client closes its own. Runs until the test process ends.
pub fn echo_server(host: &Host, port: u16) -> SocketAddr {
    let listener = within(host, move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    let addr = SocketAddr::new(host.ipv4.into(), port);
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            std::thread::spawn(move || {
                let Ok(mut write) = tcp.try_clone() else {
                    return;
                };
                if std::io::copy(&mut tcp, &mut write).is_ok() {
                    let _ = write.shutdown(std::net::Shutdown::Write);
                }
            });
        }
    });
    addr
}

/// Connects to `addr` from inside `host`'s namespace, sends `data` while reading the echo,
/// half-closes, and returns what came back.
pub fn echo_through(host: &Host, addr: SocketAddr, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let tcp = within(host, move || TcpStream::connect(addr))?;
    let mut write = tcp.try_clone()?;
    let writer = std::thread::spawn(move || {
        write.write_all(&data)?;
        write.shutdown(std::net::Shutdown::Write)
    });
    let mut read = tcp;
    let mut echoed = Vec::new();
    let result = read.read_to_end(&mut echoed);
    let written = writer.join().unwrap();
    result?;
    written?;
    Ok(echoed)
}
