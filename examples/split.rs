//! The split deployment in code: one "API node" engine that only submits and reads, and two
//! "worker" engines that only convert, sharing PostgreSQL (conversion records), Redis (job
//! queue and progress) and a blob directory. In production each would be its own process on its
//! own machine (`converto serve --no-workers` and `converto worker` with the same backend URLs);
//! here they are three engines in one program so the wiring is in one screen of code.
//!
//! Run (needs PostgreSQL and Redis):
//! `cargo run --example split --features postgres,redis,local`
//!
//! `CONVERTO_EXAMPLE_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`) and
//! `CONVERTO_EXAMPLE_REDIS_URL` (default `redis://127.0.0.1:6379`) point it elsewhere. It works
//! in its own schema (`converto_example`) and key prefix (`converto-example`).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use converto::adapters::local::LocalBlobStore;
use converto::adapters::postgres::{PostgresBackend, PostgresConfig};
use converto::adapters::redis::{RedisBackend, RedisConfig};
use converto::{
    Backends, BlobStore, BlobStoreExt, CancellationToken, ConvertContext, ConvertError,
    ConvertRequest, Converter, ConverterRegistry, Engine, EngineConfig, Format, Output, Route,
    Status, Submission, SubmitInput,
};
use futures::StreamExt;

/// Upper-cases a text file and signs it with the name of the worker that did it.
#[derive(Debug)]
struct Shout {
    worker: &'static str,
}

#[async_trait]
impl Converter for Shout {
    fn name(&self) -> &str {
        "shout"
    }

    fn routes(&self) -> Vec<Route> {
        let f = |s| Format::new(s).expect("valid format");
        vec![Route::new(f("txt"), f("shout"))]
    }

    async fn convert(
        &self,
        _req: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        let mut text = Vec::new();
        let mut stream = ctx.input_stream().await?;
        while let Some(chunk) = stream.next().await {
            text.extend_from_slice(&chunk?);
        }
        let out = format!(
            "{} (by {})",
            String::from_utf8_lossy(&text).to_uppercase(),
            self.worker
        );
        ctx.progress(100, Some("done"));
        Ok(vec![Output::bytes(
            "shout.txt",
            Format::new("shout").expect("valid format"),
            out,
        )])
    }
}

fn registry(worker: &'static str) -> ConverterRegistry {
    ConverterRegistry::new().with(Arc::new(Shout { worker }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pg_url = std::env::var("CONVERTO_EXAMPLE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let redis_url = std::env::var("CONVERTO_EXAMPLE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());

    // The shared backends. Every node opens its own connections to the same servers.
    let mut pg_config = PostgresConfig::new(pg_url);
    pg_config.schema = "converto_example".into();
    let mut redis_config = RedisConfig::new(redis_url);
    redis_config.key_prefix = "converto-example".into();
    let blob_dir = std::env::temp_dir().join("converto-example-blobs");

    let node = |name: &'static str| {
        let (pg_config, redis_config, blob_dir) =
            (pg_config.clone(), redis_config.clone(), blob_dir.clone());
        async move {
            let pg = PostgresBackend::connect(pg_config).await?;
            let redis = RedisBackend::connect(redis_config).await?;
            let blobs: Arc<dyn BlobStore> = Arc::new(LocalBlobStore::open(blob_dir).await?);
            let backends = Backends {
                store: pg.store(),
                queue: redis.queue(),
                bus: redis.bus(),
                blobs,
            };
            // Only the engines that call `run_workers` convert; the API node just submits.
            let config = EngineConfig::default().concurrency(2);
            let engine = Engine::builder()
                .backends(backends)
                .registry(registry(name))
                .config(config)
                .build()?;
            Ok::<_, Box<dyn std::error::Error>>(engine)
        }
    };
    let api = node("api").await?;
    let worker_a = node("worker-a").await?;
    let worker_b = node("worker-b").await?;

    let stop = CancellationToken::new();
    let mut running = Vec::new();
    for worker in [worker_a, worker_b] {
        let stop = stop.clone();
        running.push(tokio::spawn(async move { worker.run_workers(stop).await }));
    }

    // The API node submits; the workers pick the jobs up from Redis.
    let mut ids = Vec::new();
    for i in 0..8 {
        let submitted = api
            .submit(
                Submission::new(
                    Format::new("shout")?,
                    SubmitInput::bytes(Bytes::from(format!("note {i}")), Some(format!("{i}.txt"))),
                )
                .source(Format::new("txt")?),
            )
            .await?;
        ids.push(submitted.conversion.id);
    }
    for id in ids {
        // `watch` ends at the terminal state; the API node reads the result from PostgreSQL.
        let mut events = api.watch(id).await?;
        while events.next().await.is_some() {}
        let done = api.get(id).await?;
        match (done.status, done.artifacts.first()) {
            (Status::Succeeded, Some(artifact)) => {
                let bytes = api.backends().blobs.get_bytes(&artifact.blob_key).await?;
                println!("{id}: {}", String::from_utf8_lossy(&bytes));
            }
            (status, _) => println!("{id}: {status} {:?}", done.error),
        }
    }

    stop.cancel();
    for r in running {
        r.await??;
    }
    Ok(())
}
