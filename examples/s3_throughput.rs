//! Streams a generated body (1 GiB by default) through the `s3` blob store to an S3-compatible
//! server and back, printing MB/s and the process's peak resident memory.
//!
//! ```sh
//! moto_server -H 127.0.0.1 -p 9000 &   # or any S3-compatible server (see .ci/setup)
//! cargo run --release --features s3 --example s3_throughput
//! ```
//!
//! Environment: `CONVERTO_TEST_S3_ENDPOINT` (default `http://127.0.0.1:9000`; the bucket is
//! created with an unsigned PUT, which moto accepts), `S3_THROUGHPUT_MIB` (body size, default
//! 1024), `CONVERTO_S3_PART_SIZE` and `CONVERTO_S3_MAX_PARTS_IN_FLIGHT` (upload limits).

use std::io::{Read, Write};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use converto::adapters::s3::{ObjectBlobStore, S3Config};
use converto::blob::{BlobStore, ByteStream};
use futures::StreamExt;

const MIB: usize = 1024 * 1024;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), AnyError> {
    let endpoint = std::env::var("CONVERTO_TEST_S3_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:9000".to_owned());
    let mib: usize = match std::env::var("S3_THROUGHPUT_MIB") {
        Ok(v) => v.parse()?,
        Err(_) => 1024,
    };
    let bucket = format!("converto-throughput-{}", std::process::id());
    create_bucket(&endpoint, &bucket)?;

    let config = S3Config::from_env()?
        .with_endpoint(&endpoint)
        .with_region("us-east-1")
        .with_credentials("test", "test");
    let store = ObjectBlobStore::from_url(&format!("s3://{bucket}/throughput"), &config)?;
    println!(
        "body {mib} MiB in 1 MiB chunks, part size {} MiB, {} parts in flight, endpoint {endpoint}",
        config.part_size / MIB,
        config.max_parts_in_flight
    );
    let baseline = memory_kib("VmHWM:");

    let started = Instant::now();
    let meta = store.put("big", generated(mib)).await?;
    let up = started.elapsed();
    let after_put = memory_kib("VmHWM:");
    println!(
        "put  {:>6} MiB in {:>6.2} s: {:>7.1} MB/s",
        meta.size / MIB as u64,
        up.as_secs_f64(),
        meta.size as f64 / 1e6 / up.as_secs_f64()
    );

    let started = Instant::now();
    let mut body = store.get("big", None).await?.body;
    let mut read = 0u64;
    while let Some(chunk) = body.next().await {
        read += chunk?.len() as u64;
    }
    let down = started.elapsed();
    println!(
        "get  {:>6} MiB in {:>6.2} s: {:>7.1} MB/s",
        read / MIB as u64,
        down.as_secs_f64(),
        read as f64 / 1e6 / down.as_secs_f64()
    );
    if read != meta.size {
        return Err(format!("read {read} bytes back, wrote {}", meta.size).into());
    }
    store.delete("big").await?;

    println!(
        "peak RSS (VmHWM): {} MiB before, {} MiB after put, {} MiB at the end; VmRSS now {} MiB",
        baseline / 1024,
        after_put / 1024,
        memory_kib("VmHWM:") / 1024,
        memory_kib("VmRSS:") / 1024
    );
    Ok(())
}

/// `mib` MiB, each chunk freshly allocated as a network body would be.
fn generated(mib: usize) -> ByteStream {
    let template: Bytes = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
    futures::stream::iter(0..mib)
        .map(move |n| {
            let mut chunk = BytesMut::from(template.as_ref());
            chunk[..8].copy_from_slice(&(n as u64).to_le_bytes());
            Ok(chunk.freeze())
        })
        .boxed()
}

/// A line of /proc/self/status in KiB (0 where there is none).
fn memory_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Creates the bucket with an unsigned `PUT /bucket` (enough for moto), over a plain socket so
/// the example needs no HTTP client of its own.
fn create_bucket(endpoint: &str, bucket: &str) -> Result<(), AnyError> {
    let host = endpoint
        .strip_prefix("http://")
        .ok_or("the example creates its bucket over plain http:// only")?
        .trim_end_matches('/');
    let mut socket = std::net::TcpStream::connect(host)?;
    write!(
        socket,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    socket.read_to_string(&mut response)?;
    match response.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!(
            "creating bucket {bucket} failed: {}",
            response.lines().next().unwrap_or("")
        )
        .into()),
    }
}
