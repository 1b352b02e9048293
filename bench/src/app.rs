//! `palisade-bench app`: the upstream application every path ends at (1 KiB responses).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

pub(crate) async fn app(listen: SocketAddr) -> anyhow::Result<()> {
    let body = Bytes::from(vec![b'x'; 1024]);
    let listener = TcpListener::bind(listen).await?;
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (body, builder) = (body.clone(), builder.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}
