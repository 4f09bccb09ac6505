//! Embeds converto in a Rust program: a converter of its own, in-memory backends, one file
//! converted in-process with progress printed as it goes.
//!
//! Run: `cargo run --example embed [FILE]` (without FILE it converts a small built-in text).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use converto::{
    BlobStoreExt, CancellationToken, ConvertContext, ConvertError, ConvertRequest, Converter,
    ConverterRegistry, Engine, EngineConfig, Event, Format, Output, Route, Status, Submission,
    SubmitInput,
};
use futures::StreamExt;

/// Counts the words of a text file and writes a small JSON report.
#[derive(Debug)]
struct WordCount;

#[async_trait]
impl Converter for WordCount {
    fn name(&self) -> &str {
        "word-count"
    }

    fn routes(&self) -> Vec<Route> {
        let f = |s| Format::new(s).expect("valid format");
        vec![Route::new(f("txt"), f("json"))]
    }

    async fn convert(
        &self,
        _req: &ConvertRequest,
        ctx: &ConvertContext,
    ) -> Result<Vec<Output>, ConvertError> {
        let total = ctx.input_size().await?.max(1);
        let mut stream = ctx.input_stream().await?;
        let (mut read, mut words, mut in_word) = (0u64, 0u64, false);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            for &b in chunk.iter() {
                let space = b.is_ascii_whitespace();
                words += u64::from(in_word && space);
                in_word = !space;
            }
            read += chunk.len() as u64;
            ctx.progress((read * 100 / total) as u8, Some("counting"));
            if ctx.is_cancelled() {
                return Err(ConvertError::Cancelled);
            }
        }
        words += u64::from(in_word);
        let report = serde_json::json!({ "bytes": read, "words": words });
        Ok(vec![Output::bytes(
            "report.json",
            Format::new("json").expect("json"),
            report.to_string(),
        )])
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (name, data) = match std::env::args().nth(1) {
        Some(path) => (path.clone(), Bytes::from(std::fs::read(&path)?)),
        None => (
            "sample.txt".to_owned(),
            Bytes::from("the quick brown fox jumps over the lazy dog\n".repeat(2000)),
        ),
    };
    let registry = ConverterRegistry::new().with(Arc::new(WordCount));
    let engine = Engine::in_memory(registry, EngineConfig::default());

    let stop = CancellationToken::new();
    let workers = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run_workers(stop).await }
    });

    let submitted = engine
        .submit(
            Submission::new(Format::new("json")?, SubmitInput::bytes(data, Some(name)))
                .source(Format::new("txt")?),
        )
        .await?;
    let id = submitted.conversion.id;
    println!("submitted {id}");

    let mut events = engine.watch(id).await?;
    while let Some(event) = events.next().await {
        match event {
            Event::Progress { progress, .. } => println!(
                "  {:>3}% {}",
                progress.percent,
                progress.stage.unwrap_or_default()
            ),
            Event::Status { status, error, .. } => println!(
                "  status: {status}{}",
                error
                    .map(|e| format!(" ({})", e.message))
                    .unwrap_or_default()
            ),
        }
    }

    let done = engine.get(id).await?;
    if done.status == Status::Succeeded {
        for artifact in &done.artifacts {
            let bytes = engine
                .backends()
                .blobs
                .get_bytes(&artifact.blob_key)
                .await?;
            println!(
                "{} ({} bytes, {}): {}",
                artifact.name,
                artifact.size,
                artifact.checksum,
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    stop.cancel();
    workers.await??;
    Ok(())
}
