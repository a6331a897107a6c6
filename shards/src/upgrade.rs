//! Zero-downtime binary upgrade: a new process takes the running one's listening sockets over
//! a Unix socket (`SCM_RIGHTS`), so no connection attempt is refused while the binary changes.
//!
//! The running gateway holds the abstract Unix socket `kateway-listen:<listen>` (which also
//! keeps a second gateway off its address). `kateway serve --upgrade` connects to it and says
//! `upgrade` with its data directory; the running one checks that the caller runs as its own
//! user (or root) and serves the same directory, then sends a duplicate of every core's
//! listening sockets. The new process checks that each socket listens where its own
//! configuration says (else it refuses and the running one keeps serving). Then the running
//! one drains as on SIGTERM (parked long polls answered, in-flight requests finished, idle
//! connections closed, the store flushed), stops its cores, releases the data directory's lock
//! and says `released`. Only then does the new process take the lock, recover the store and
//! accept on the inherited sockets; if the running one dies instead, the new one takes the
//! lock as soon as the kernel frees it. Meanwhile new connections wait in the sockets' accept
//! queues (the sockets never close): they are served late, never refused. SIGUSR2 makes the
//! running gateway start the upgrade itself: it runs the binary at the path it was started
//! from (the new version once replaced) with its own arguments and `--upgrade`.
//!
//! The exchange, one line each way at a time, each within `STEP` and at most `MAX_LINE`
//! bytes: `upgrade data=<hex path>` →; ← `fds <kind>...` with the sockets attached (at most
//! `CHUNK` per line), → `ok` (or `refused <why>`) after each; ← `end`, → `ok`; ← `released`
//! once drained (or `failed <why>` at any step).

use crate::conn::Listener;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// Sockets per message (the kernel takes at most 253).
const CHUNK: usize = 200;
/// How long either side waits for the other's next line (but the successor waits for the
/// drain as long as it takes).
const STEP: Duration = Duration::from_secs(5);
/// The longest line either side reads.
const MAX_LINE: usize = 8192;

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

/// What the new process got: the sockets, and whether the previous process said it released
/// the data directory (`false`: it died first, and the lock is free once the kernel has
/// closed its files).
pub struct Taken {
    pub inherited: Inherited,
    pub released: bool,
}

/// Lines in and out of the upgrade socket, with the descriptors that came with them.
struct Wire<'a> {
    s: &'a UnixStream,
    pending: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl<'a> Wire<'a> {
    fn new(s: &'a UnixStream) -> std::io::Result<Self> {
        s.set_read_timeout(Some(STEP))?;
        s.set_write_timeout(Some(STEP))?;
        Ok(Wire {
            s,
            pending: Vec::new(),
            fds: VecDeque::new(),
        })
    }

    /// The next line without its newline; `None` at the end of the stream.
    fn line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let rest = self.pending.split_off(i + 1);
                let line = std::mem::replace(&mut self.pending, rest);
                let text = String::from_utf8_lossy(&line[..i]).into_owned();
                return Ok(Some(text));
            }
            if self.pending.len() > MAX_LINE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a line longer than the protocol allows",
                ));
            }
            if self.recv()? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next line; the end of the stream is an error.
    fn expect_line(&mut self) -> std::io::Result<String> {
        self.line()?
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
    }

    // Taking ownership of the descriptors `SCM_RIGHTS` installed needs `from_raw_fd`.
    #[allow(unsafe_code)]
    fn recv(&mut self) -> std::io::Result<usize> {
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!([RawFd; CHUNK]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            self.s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        for c in msg.cmsgs() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this process for us.
                self.fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn say(&self, line: &str) -> std::io::Result<()> {
        let mut w = self.s;
        w.write_all(format!("{line}\n").as_bytes())
    }
}

/// The hex form of a path's bytes (a path may hold spaces, never a newline once encoded).
fn hex(p: &Path) -> String {
    p.as_os_str()
        .as_encoded_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The data directory as both sides compare it: canonical where it exists.
pub fn data_dir_id(p: &Path) -> String {
    hex(&std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
}

/// A listener the new process's configuration asks for: kind, address and the key naming it.
pub struct Wanted {
    pub kind: Listener,
    pub addr: String,
    pub key: &'static str,
}

/// Why an inherited socket of `kind` cannot serve: this process's configuration does not place
/// that kind at the address it listens on.
fn misplaced(kind: Listener, fd: &OwnedFd, wanted: &[Wanted]) -> Option<String> {
    let Some(w) = wanted.iter().find(|w| w.kind == kind) else {
        // The new configuration drops this listener: its socket is closed once taken.
        return None;
    };
    // A duplicate, closed again at once, to ask the socket's address the standard way.
    let at = fd
        .try_clone()
        .ok()
        .and_then(|d| std::net::TcpListener::from(d).local_addr().ok());
    let want = w.addr.parse::<SocketAddr>().ok();
    match (at, want) {
        (Some(a), Some(b)) if a == b => None,
        (a, _) => Some(format!(
            "{} = {} here, but the running gateway listens on {} for it: restart instead of upgrading to change it",
            w.key,
            w.addr,
            a.map_or_else(|| "an unknown address".to_string(), |a| a.to_string())
        )),
    }
}

/// The new process's side: asks the gateway listening on `listen` for its sockets and waits
/// until it has released the data directory. `Ok(None)` when no gateway holds the address.
pub fn take_over(
    listen: &str,
    data_dir: &Path,
    wanted: &[Wanted],
) -> Result<Option<Taken>, String> {
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
    let mut wire = Wire::new(&stream).map_err(lost)?;
    wire.say(&format!("upgrade data={}", data_dir_id(data_dir)))
        .map_err(lost)?;
    let mut got = Inherited::default();
    loop {
        let line = wire.expect_line().map_err(lost)?;
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("fds") => {
                let kinds: Vec<_> = words.map(kind_of).collect();
                if kinds.len() > wire.fds.len() || kinds.iter().any(Option::is_none) {
                    let _ = wire.say("refused bad socket list");
                    return Err(format!(
                        "the running gateway sent a bad socket list: {line}"
                    ));
                }
                let fds: Vec<OwnedFd> = wire.fds.drain(..kinds.len()).collect();
                let pairs: Vec<_> = kinds.into_iter().flatten().zip(fds).collect();
                if let Some(why) = pairs.iter().find_map(|(k, fd)| misplaced(*k, fd, wanted)) {
                    let _ = wire.say(&format!("refused {why}"));
                    return Err(why);
                }
                got.sockets.extend(pairs);
                wire.say("ok").map_err(lost)?;
            }
            Some("end") => {
                wire.say("ok").map_err(lost)?;
                break;
            }
            Some("failed") => {
                return Err(format!(
                    "the running gateway refused the upgrade: {}",
                    line.trim_start_matches("failed").trim()
                ))
            }
            _ => return Err(format!("the running gateway answered {line:?}")),
        }
    }
    notify_main_pid();
    tracing::info!(
        sockets = got.sockets.len(),
        "took the listening sockets over; waiting for the running gateway to drain"
    );
    // The drain takes as long as it takes (up to the running gateway's shutdown timeout).
    stream.set_read_timeout(None).map_err(lost)?;
    match wire.line() {
        Ok(Some(l)) if l == "released" => Ok(Some(Taken {
            inherited: got,
            released: true,
        })),
        Ok(Some(l)) => Err(format!("the running gateway did not hand over: {l}")),
        Ok(None) | Err(_) => {
            tracing::warn!("the running gateway went away without releasing its data directory; taking it once its lock is free");
            Ok(Some(Taken {
                inherited: got,
                released: false,
            }))
        }
    }
}

/// The running gateway's side: waits on the address claim's socket for an upgrade request
/// from a process of this user (or root) that serves the same data directory (`data_id`, from
/// [`data_dir_id`]); others are answered `failed <why>` and logged. The stream returned has
/// said `upgrade`.
pub fn accept_request(listener: &UnixListener, data_id: &str) -> std::io::Result<UnixStream> {
    loop {
        let (s, _) = listener.accept()?;
        match check_request(&s, data_id) {
            Ok(()) => return Ok(s),
            Err(why) => {
                tracing::warn!("upgrade request refused: {why}");
                if let Ok(w) = Wire::new(&s) {
                    let _ = w.say(&format!("failed {why}"));
                }
            }
        }
    }
}

fn check_request(s: &UnixStream, data_id: &str) -> Result<(), String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let me = nix::unistd::geteuid().as_raw();
    let peer = getsockopt(s.as_raw_fd(), PeerCredentials)
        .map_err(|e| format!("cannot tell who asks: {e}"))?;
    if peer.uid() != me && peer.uid() != 0 {
        return Err(format!(
            "process {} runs as uid {}, this gateway as uid {me}",
            peer.pid(),
            peer.uid()
        ));
    }
    let mut wire = Wire::new(s).map_err(|e| e.to_string())?;
    let line = wire
        .expect_line()
        .map_err(|e| format!("process {}: {e}", peer.pid()))?;
    let mut words = line.split_ascii_whitespace();
    if words.next() != Some("upgrade") {
        return Err(format!("process {} sent {line:?}", peer.pid()));
    }
    for w in words {
        if let Some(theirs) = w.strip_prefix("data=") {
            if theirs != data_id {
                return Err(format!(
                    "process {} serves another data directory than this gateway's",
                    peer.pid()
                ));
            }
        }
    }
    Ok(())
}

/// The running gateway's side, once a request is accepted: sends duplicates of `sockets` (the
/// caller keeps its own, and keeps accepting until it drains) and waits for the new process to
/// accept them.
pub fn hand_over(stream: &UnixStream, sockets: &[(Listener, RawFd)]) -> Result<(), String> {
    let lost = |e: std::io::Error| format!("the upgrading process went away: {e}");
    let mut wire = Wire::new(stream).map_err(lost)?;
    let answered = |wire: &mut Wire| -> Result<(), String> {
        let line = wire.expect_line().map_err(lost)?;
        match line.as_str() {
            "ok" => Ok(()),
            l => Err(format!(
                "the upgrading process {}",
                l.strip_prefix("refused ")
                    .map_or_else(|| format!("answered {l:?}"), |w| format!("refused: {w}"))
            )),
        }
    };
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
        answered(&mut wire)?;
    }
    wire.say("end").map_err(lost)?;
    answered(&mut wire)
}

/// The running gateway's last word, once its lock is released (or why the handover failed).
pub fn finish(stream: &UnixStream, outcome: Result<(), String>) {
    let mut w = stream;
    let line = match &outcome {
        Ok(()) => "released\n".to_string(),
        Err(e) => format!("failed {e}\n"),
    };
    let released = outcome.is_ok();
    if let Err(e) = w.write_all(line.as_bytes()) {
        if released {
            tracing::warn!("could not tell the upgrading process that the directory is free: {e}");
        }
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
    let pid = child.id();
    // Reaped when it exits: a successor that failed leaves no zombie, and says how it ended.
    let mut child = child;
    let _ = std::thread::Builder::new()
        .name("kateway-successor".into())
        .spawn(move || match child.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::error!(pid, "the successor process failed ({s}); still serving"),
            Err(e) => tracing::warn!(pid, "cannot wait for the successor process: {e}"),
        });
    Ok(pid)
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) that this process is ready and is the
/// service's main process. Nothing happens outside systemd (`NOTIFY_SOCKET` unset).
pub fn notify_ready() {
    notify(&format!("READY=1\nMAINPID={}\n", std::process::id()));
}

/// Tells systemd that the service is stopping (on SIGTERM or SIGINT; not on an upgrade, whose
/// successor is the service's main process by then).
pub fn notify_stopping() {
    notify("STOPPING=1\n");
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
