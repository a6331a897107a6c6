//! The `noop` ceiling: the gateway's runtime setup (monoio on io_uring with the same ring flags,
//! one pinned thread per CPU, `SO_REUSEPORT`) and its HTTP codec, answering every request with
//! the same 201 a publish gets, without storing anything.

use bytes::BytesMut;
use kateway_proto::http1::{encode::Response, Decoder, Event, Limits};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

/// Serves until killed.
pub fn serve(listen: &str, cpus: &[usize]) -> anyhow::Result<()> {
    let threads: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            let listen = listen.to_owned();
            std::thread::spawn(move || {
                if let Some(id) = core_affinity::get_core_ids()
                    .and_then(|ids| ids.into_iter().find(|c| c.id == cpu))
                {
                    core_affinity::set_for_current(id);
                }
                let mut rt = crate::client::runtime();
                rt.block_on(async move {
                    let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
                    let l = TcpListener::bind_with_config(listen.as_str(), &opts).expect("bind");
                    while let Ok((s, _)) = l.accept().await {
                        let _ = s.set_nodelay(true);
                        monoio::spawn(conn(s));
                    }
                })
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

async fn conn(mut s: TcpStream) {
    let mut dec = Decoder::new(Limits {
        max_head: 8192,
        max_body: 5 << 20,
    });
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut wbuf = BytesMut::with_capacity(4096);
    loop {
        loop {
            match dec.decode(&mut rbuf) {
                Ok(Some(Event::Request(_))) => {
                    Response::new(&mut wbuf, 201, b"Mon, 30 Nov 2026 00:00:00 GMT")
                        .header_int("x-partition", 0)
                        .header_int("x-offset", 0)
                        .body("application/json", b"{\"partition\":0,\"offset\":0}");
                }
                Ok(Some(Event::Continue)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !wbuf.is_empty() {
            let (r, b) = s.write_all(wbuf).await;
            wbuf = b;
            wbuf.clear();
            if r.is_err() {
                return;
            }
        }
        if rbuf.capacity() - rbuf.len() < 2048 {
            rbuf.reserve(4096);
        }
        let len = rbuf.len();
        let (r, slice) = s.read(rbuf.slice_mut(len..)).await;
        rbuf = slice.into_inner();
        match r {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
