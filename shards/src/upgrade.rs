//! Zero-downtime binary upgrade: a new process takes the running one's listening sockets over
//! a Unix socket (`SCM_RIGHTS`), so no connection attempt is refused while the binary changes.
//!
//! The running gateway holds the abstract Unix socket `kateway-listen:<listen>` (which also
//! keeps a second gateway off its address). `kateway serve --upgrade` connects to it and says
//! `upgrade`; the running one sends a duplicate of every core's listening sockets, then drains
//! as on SIGTERM (parked long polls answered, in-flight requests finished, idle connections
//! closed, the store flushed), stops its cores, releases the data directory's lock and says
//! `released`. Only then does the new process take the lock, recover the store and accept on
//! the inherited sockets. Meanwhile new connections wait in the sockets' accept queues (the
//! sockets never close): they are served late, never refused. SIGUSR2 makes the running
//! gateway start the upgrade itself: it runs the binary at the path it was started from (the
//! new version once replaced) with its own arguments and `--upgrade`.
//!
//! The exchange, one line each way at a time: `upgrade` →; ← `fds <kind>...` with the sockets
//! attached (at most [`CHUNK`] per line), → `ok` after each; ← `end`; ← `released` (or
//! `failed <why>`).

use crate::conn::Listener;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Sockets per message (the kernel takes at most 253).
const CHUNK: usize = 200;

/// The abstract Unix socket name a gateway on `listen` holds.
pub fn socket_name(listen: &str) -> String {
    format!("kateway-listen:{listen}")
}

fn kind_name(k: Listener) -> &'static str {
    match k {
        Listener::Main => "main",
        Listener::Operator => "operator",
        Listener::Health => "health",
    }
}

fn kind_of(s: &str) -> Option<Listener> {
    Some(match s {
        "main" => Listener::Main,
        "operator" => Listener::Operator,
        "health" => Listener::Health,
        _ => return None,
    })
}

/// Listening sockets taken over from the previous process, by kind.
#[derive(Default)]
pub struct Inherited {
    pub sockets: Vec<(Listener, OwnedFd)>,
}

impl Inherited {
    /// The sockets by core, for `cores` cores: the `i`th socket of each kind goes to core
    /// `i % cores`, so none is left without an acceptor (its queued connections would be reset
    /// when it closed).
    pub fn by_core(self, cores: usize) -> Vec<Vec<(Listener, std::net::TcpListener)>> {
        let mut out: Vec<Vec<_>> = (0..cores).map(|_| Vec::new()).collect();
        let mut seen: Vec<(Listener, usize)> = Vec::new();
        for (k, fd) in self.sockets {
            let i = match seen.iter_mut().find(|(s, _)| *s == k) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    seen.push((k, 0));
                    0
                }
            };
            out[i % cores].push((k, std::net::TcpListener::from(fd)));
        }
        out
    }
}

/// The new process's side: asks the gateway listening on `listen` for its sockets and waits
/// until it has released the data directory. `Ok(None)` when no gateway holds the address.
pub fn take_over(listen: &str) -> Result<Option<Inherited>, String> {
    use std::os::linux::net::SocketAddrExt;
    let name = socket_name(listen);
    let at = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("{name}: {e}"))?;
    let stream = match UnixStream::connect_addr(&at) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(format!("cannot reach the running gateway on {listen}: {e}")),
    };
    let lost = |e: std::io::Error| format!("the running gateway broke off the upgrade: {e}");
    (&stream).write_all(b"upgrade\n").map_err(lost)?;
    let mut got = Inherited::default();
    loop {
        let (line, fds) = recv_line(&stream).map_err(lost)?;
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("fds") => {
                let kinds: Vec<_> = words.map(kind_of).collect();
                if kinds.len() != fds.len() || kinds.iter().any(Option::is_none) {
                    return Err(format!(
                        "the running gateway sent a bad socket list: {line}"
                    ));
                }
                got.sockets.extend(kinds.into_iter().flatten().zip(fds));
                (&stream).write_all(b"ok\n").map_err(lost)?;
            }
            Some("end") => break,
            _ => return Err(format!("the running gateway answered {line:?}")),
        }
    }
    notify_main_pid();
    tracing::info!(
        sockets = got.sockets.len(),
        "took the listening sockets over; waiting for the running gateway to drain"
    );
    // The rest arrives as plain lines.
    let mut r = BufReader::new(&stream);
    let mut line = String::new();
    r.read_line(&mut line).map_err(lost)?;
    match line.trim_end() {
        "released" => Ok(Some(got)),
        "" => Err("the running gateway exited without releasing its data directory".into()),
        other => Err(format!("the running gateway did not hand over: {other}")),
    }
}

/// One line and the descriptors attached to it.
// Taking ownership of the descriptors `SCM_RIGHTS` installed needs `from_raw_fd`.
#[allow(unsafe_code)]
fn recv_line(s: &UnixStream) -> std::io::Result<(String, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 8192];
    let mut cmsg = nix::cmsg_space!([RawFd; CHUNK]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this process for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if n == 0 {
        return Ok((String::new(), fds));
    }
    let line = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
    Ok((line, fds))
}

/// The running gateway's side, before it drains: reads the request and sends duplicates of
/// `sockets` (the caller keeps its own, and keeps accepting until it drains).
pub fn hand_over(stream: &UnixStream, sockets: &[(Listener, RawFd)]) -> Result<(), String> {
    let lost = |e: std::io::Error| format!("the upgrading process went away: {e}");
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).map_err(lost)?;
    if line.trim_end() != "upgrade" {
        return Err(format!(
            "unexpected request on the upgrade socket: {line:?}"
        ));
    }
    for chunk in sockets.chunks(CHUNK) {
        let mut head = String::from("fds");
        for (k, _) in chunk {
            head.push(' ');
            head.push_str(kind_name(*k));
        }
        head.push('\n');
        let fds: Vec<RawFd> = chunk.iter().map(|(_, fd)| *fd).collect();
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(head.as_bytes())],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| lost(e.into()))?;
        line.clear();
        r.read_line(&mut line).map_err(lost)?;
        if line.trim_end() != "ok" {
            return Err(format!("the upgrading process answered {line:?}"));
        }
    }
    let mut w = stream;
    w.write_all(b"end\n").map_err(lost)
}

/// The running gateway's last word, once its lock is released (or why the handover failed).
pub fn finish(stream: &UnixStream, outcome: Result<(), String>) {
    let mut w = stream;
    let line = match outcome {
        Ok(()) => "released\n".to_string(),
        Err(e) => format!("failed {e}\n"),
    };
    if let Err(e) = w.write_all(line.as_bytes()) {
        tracing::warn!("could not tell the upgrading process that the directory is free: {e}");
    }
}

/// SIGUSR2: starts the binary this process was started from, with the same arguments and
/// `--upgrade`; it connects back and the handover proceeds.
pub fn spawn_successor() -> Result<u32, String> {
    let mut args = std::env::args_os();
    let exe = args.next().ok_or("no program name")?;
    let exe = std::path::Path::new(&exe);
    // A relative program name is resolved where the process started (it did not chdir).
    let exe = if exe.is_relative() && exe.components().count() > 1 {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(exe)
    } else {
        exe.to_path_buf()
    };
    let rest: Vec<_> = args.filter(|a| a != "--upgrade").collect();
    let child = std::process::Command::new(&exe)
        .args(&rest)
        .arg("--upgrade")
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    Ok(child.id())
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) that this process is ready and is the
/// service's main process. Nothing happens outside systemd (`NOTIFY_SOCKET` unset).
pub fn notify_ready() {
    notify(&format!("READY=1\nMAINPID={}\n", std::process::id()));
}

/// Tells systemd that this process is the service's main process from now on: sent by a
/// successor as soon as it holds the sockets, before the process it replaces exits (systemd
/// would take that exit for the service's end and stop the successor with it).
pub fn notify_main_pid() {
    notify(&format!("MAINPID={}\n", std::process::id()));
}

fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("sd_notify: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::warn!("sd_notify: {e}");
    }
}
