//! `baseline-tokio`: what a competent engineer would build instead — tokio's multi-threaded
//! runtime and hyper serving the same `POST /v1/msgs/:topic/:ver` contract, appending each
//! message to a file with the same group-commit durability: handlers hand messages to one
//! writer thread, which writes everything queued with one `write`, `fdatasync`s when an
//! `ack=all` message is in the batch, then answers every waiter.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::io::Write;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

struct Append {
    body: Bytes,
    sync: bool,
    done: oneshot::Sender<u64>,
}

/// Serves until killed.
pub fn serve(listen: &str, threads: usize, data: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("baseline.log"))?;
    let (tx, rx) = mpsc::channel::<Append>(65536);
    std::thread::spawn(move || writer(file, rx));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let tx = Arc::new(tx);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, tx.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

async fn handle(
    req: Request<Incoming>,
    tx: Arc<mpsc::Sender<Append>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let json = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    };
    let path_ok = req.method() == hyper::Method::POST && req.uri().path().starts_with("/v1/msgs/");
    if !path_ok {
        return Ok(json(
            StatusCode::NOT_FOUND,
            "{\"errmsg\":\"not found\",\"code\":40401}".into(),
        ));
    }
    let sync = !req.uri().query().unwrap_or("").contains("ack=local");
    let body = req.into_body().collect().await?.to_bytes();
    let (done, wait) = oneshot::channel();
    if tx.send(Append { body, sync, done }).await.is_err() {
        return Ok(json(
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"errmsg\":\"writer gone\",\"code\":50300}".into(),
        ));
    }
    let offset = wait.await.unwrap_or(0);
    let mut r = json(
        StatusCode::CREATED,
        format!("{{\"partition\":0,\"offset\":{offset}}}"),
    );
    r.headers_mut().insert("x-partition", 0.into());
    r.headers_mut().insert("x-offset", offset.into());
    Ok(r)
}

fn writer(mut file: std::fs::File, mut rx: mpsc::Receiver<Append>) {
    let mut offset = 0u64;
    let mut batch = Vec::new();
    let mut buf = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 4096 {
                break;
            }
        }
        buf.clear();
        for a in &batch {
            buf.extend_from_slice(&(a.body.len() as u32).to_be_bytes());
            buf.extend_from_slice(&a.body);
        }
        let ok = file.write_all(&buf).is_ok();
        if ok && batch.iter().any(|a| a.sync) {
            let _ = file.sync_data();
        }
        for a in batch.drain(..) {
            let _ = a.done.send(offset);
            offset += 1;
        }
    }
}
