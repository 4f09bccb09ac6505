//! Connection loss under load: the real `converto serve` over PostgreSQL (store) and Redis
//! (queue and progress), each reached through a TCP proxy in this test. While conversions run,
//! both proxies are cut: every open connection is dropped and new ones are refused at once, as
//! when the servers restart. Meanwhile `/readyz` must answer 503; once the proxies are restored
//! it must answer 200 again (the service reconnected on its own), and every conversion must
//! finish exactly once.
//!
//! Proxies stand in for restarting the servers themselves because the servers are shared with
//! the other tests of the run (and with the machine), which a real restart would disturb.
//!
//! Needs PostgreSQL and Redis: `CONVERTO_TEST_POSTGRES_URL` (default
//! postgres://postgres@127.0.0.1:5432/test) and `CONVERTO_TEST_REDIS_URL` (default
//! redis://127.0.0.1:6379). Unreachable servers fail the test when CI=true, else skip it.
#![cfg(all(
    feature = "postgres",
    feature = "redis",
    feature = "local",
    feature = "process"
))]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Proc, expect_succeeded_once, pg_and_redis_urls, reachable, skip_or_fail};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

const CONVERSIONS: usize = 120;

/// A TCP proxy that can be cut (all connections dropped, new ones refused) and restored.
struct Proxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (up, up_rx) = watch::channel(true);
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let conns = Arc::clone(&conns);
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !*up_rx.borrow() {
                        drop(inbound); // refused: the "server" is down
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().expect("conns").push(task.abort_handle());
                }
            }
        })
        .abort_handle();
        Self {
            addr,
            up,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.up.send_replace(false);
        for c in self.conns.lock().expect("conns").drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The URL with its host and port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (auth, host_and_path) = match rest.rsplit_once('@') {
        Some((auth, hp)) => (format!("{auth}@"), hp),
        None => (String::new(), rest),
    };
    let path = host_and_path
        .find('/')
        .map(|i| &host_and_path[i..])
        .unwrap_or("");
    format!("{scheme}://{auth}{addr}{path}")
}

async fn ready(client: &reqwest::Client, base: &str) -> Option<(u16, Value)> {
    let resp = client.get(format!("{base}/readyz")).send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_postgres_and_redis_loses_no_conversion() {
    let (pg, redis) = pg_and_redis_urls();
    let (Some(pg_addr), Some(redis_addr)) = (reachable(&pg, 5432), reachable(&redis, 6379)) else {
        return skip_or_fail(
            "the connection-loss test",
            &format!(
                "PostgreSQL ({pg}) or Redis ({redis}) unreachable; set CONVERTO_TEST_POSTGRES_URL / CONVERTO_TEST_REDIS_URL"
            ),
        );
    };
    let pg_proxy = Proxy::start(pg_addr).await;
    let redis_proxy = Proxy::start(redis_addr).await;
    let pg_url = via(&pg, pg_proxy.addr);
    let redis_url = via(&redis, redis_proxy.addr);

    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("blobs");
    let routes = common::slow_route(dir.path(), "0.1");
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let schema = format!("converto_loss_{tag}");
    let args: Vec<String> = [
        "--data-dir",
        &dir.path().join("data").display().to_string(),
        "--store",
        &pg_url,
        "--queue",
        &redis_url,
        "--progress",
        &redis_url,
        "--blobs",
        &blobs.display().to_string(),
        "--routes",
        &routes.display().to_string(),
        "--lease",
        "3",
        "--concurrency",
        "4",
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = [
        ("CONVERTO_LOG", "error".to_owned()),
        ("CONVERTO_POSTGRES_SCHEMA", schema.clone()),
        ("CONVERTO_POSTGRES_ACQUIRE_TIMEOUT_SECS", "2".to_owned()),
        ("CONVERTO_REDIS_KEY_PREFIX", format!("converto-loss:{tag}")),
        ("CONVERTO_REDIS_RESPONSE_TIMEOUT_MS", "2000".to_owned()),
        ("CONVERTO_REDIS_CONNECT_TIMEOUT_MS", "1000".to_owned()),
    ];
    let server = Proc::spawn(&args, &env, true);
    let base = server.base().to_owned();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    assert_eq!(
        ready(&client, &base).await.map(|r| r.0),
        Some(200),
        "ready before the cut"
    );

    let ids = common::submit_jobs(&client, &base, CONVERSIONS, 8).await;

    // Cut once some conversions are done and others are running.
    common::wait_for_succeeded(&client, &base, 10, Duration::from_secs(60)).await;
    pg_proxy.cut();
    redis_proxy.cut();

    // Not ready while the servers are away.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((503, body)) = ready(&client, &base).await {
            assert_eq!(body["status"], "not_ready", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never reported the lost backends"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg_proxy.restore();
    redis_proxy.restore();

    // Ready again without a restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ready(&client, &base).await {
            Some((200, _)) => break,
            other => assert!(
                Instant::now() < deadline,
                "the service did not reconnect: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every conversion finishes, exactly once. A request may still meet a connection that
    // died in the cut (503, retried as a client would); a conversion must never be lost.
    let deadline = Instant::now() + Duration::from_secs(180);
    for (i, id) in &ids {
        expect_succeeded_once(&client, &base, &blobs, id, &format!("job {i}"), deadline).await;
    }
    drop(server);
    common::drop_pg_schemas(&pg, &schema).await;
}
