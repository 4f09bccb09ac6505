//! The `BlobStore` conformance suite.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::blob::{BlobError, BlobStore, BlobStoreExt, ByteStream, PresignMethod};

fn unique(prefix: &str) -> String {
    format!("suite/{prefix}-{}", crate::ConversionId::new())
}

fn chunked(data: Bytes, chunk: usize) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = (0..data.len())
        .step_by(chunk.max(1))
        .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
        .collect();
    futures::stream::iter(chunks).boxed()
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

/// Runs every check, each on a fresh store from `make`.
pub async fn run_blob_suite(make: impl AsyncFn() -> Arc<dyn BlobStore>) {
    put_get_head_delete(make().await.as_ref()).await;
    streams_large_blobs(make().await.as_ref()).await;
    ranged_reads(make().await.as_ref()).await;
    empty_blob(make().await.as_ref()).await;
    overwrite_replaces(make().await.as_ref()).await;
    failed_body_stores_nothing(make().await.as_ref()).await;
    list_by_prefix(make().await.as_ref()).await;
    rejects_hostile_keys(make().await.as_ref()).await;
    presign_as_declared(make().await.as_ref()).await;
}

/// Put, get, head and delete one blob; missing blobs are `NotFound`; delete is idempotent.
pub async fn put_get_head_delete(store: &dyn BlobStore) {
    let key = unique("basic");
    let meta = store
        .put_bytes(&key, Bytes::from_static(b"hello world"))
        .await
        .expect("put");
    assert_eq!(meta.size, 11);
    assert_eq!(meta.key, key);
    assert_eq!(
        store.get_bytes(&key).await.expect("get"),
        Bytes::from_static(b"hello world")
    );
    let head = store.head(&key).await.expect("head");
    assert_eq!(head.size, 11);
    assert_eq!(head.etag, meta.etag, "etag stable across head");
    store.delete(&key).await.expect("delete");
    assert!(matches!(
        store.head(&key).await,
        Err(BlobError::NotFound { .. })
    ));
    assert!(matches!(
        store.get(&key, None).await,
        Err(BlobError::NotFound { .. })
    ));
    store
        .delete(&key)
        .await
        .expect("deleting a missing blob is not an error");
}

/// A multi-megabyte blob written in small chunks reads back byte for byte.
pub async fn streams_large_blobs(store: &dyn BlobStore) {
    let key = unique("large");
    let data = pattern(6 * 1024 * 1024 + 123);
    let meta = store
        .put(&key, chunked(data.clone(), 64 * 1024 + 7))
        .await
        .expect("put");
    assert_eq!(meta.size, data.len() as u64);
    let got = store.get_bytes(&key).await.expect("get");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "large blob content differs");
    store.delete(&key).await.expect("delete");
}

/// Ranged reads return exactly the bytes asked for; the end is clamped; a start past the end
/// is `InvalidRange`.
pub async fn ranged_reads(store: &dyn BlobStore) {
    let key = unique("range");
    let data = pattern(100_000);
    store
        .put(&key, chunked(data.clone(), 4096))
        .await
        .expect("put");
    for (start, end) in [
        (0u64, 1u64),
        (10, 20),
        (4095, 4097),
        (99_999, 100_000),
        (50_000, 200_000),
    ] {
        let read = store.get(&key, Some(start..end)).await.expect("ranged get");
        let want_end = end.min(100_000);
        assert_eq!(read.range, start..want_end);
        assert_eq!(read.meta.size, 100_000);
        let mut body = read.body;
        let mut got = Vec::new();
        while let Some(c) = body.next().await {
            got.extend_from_slice(&c.expect("chunk"));
        }
        assert_eq!(
            got.as_slice(),
            &data[start as usize..want_end as usize],
            "range {start}..{end}"
        );
    }
    assert!(matches!(
        store.get(&key, Some(100_000..100_010)).await,
        Err(BlobError::InvalidRange { .. })
    ));
    store.delete(&key).await.expect("delete");
}

/// An empty blob is stored and read back as empty.
pub async fn empty_blob(store: &dyn BlobStore) {
    let key = unique("empty");
    let meta = store.put_bytes(&key, Bytes::new()).await.expect("put");
    assert_eq!(meta.size, 0);
    assert!(store.get_bytes(&key).await.expect("get").is_empty());
    store.delete(&key).await.expect("delete");
}

/// A second put replaces the first, and the etag changes.
pub async fn overwrite_replaces(store: &dyn BlobStore) {
    let key = unique("overwrite");
    let a = store
        .put_bytes(&key, Bytes::from_static(b"first version"))
        .await
        .expect("put a");
    let b = store
        .put_bytes(&key, Bytes::from_static(b"second"))
        .await
        .expect("put b");
    assert_ne!(a.etag, b.etag, "etag must change with content");
    assert_eq!(
        store.get_bytes(&key).await.expect("get"),
        Bytes::from_static(b"second")
    );
    store.delete(&key).await.expect("delete");
}

/// A body stream that fails half way stores nothing, and leaves an earlier blob intact.
pub async fn failed_body_stores_nothing(store: &dyn BlobStore) {
    let failing = || -> ByteStream {
        futures::stream::iter(vec![
            Ok(Bytes::from(vec![1u8; 100_000])),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "client went away",
            )),
        ])
        .boxed()
    };
    let key = unique("failed");
    assert!(
        store.put(&key, failing()).await.is_err(),
        "a failed body must fail the put"
    );
    assert!(
        matches!(store.head(&key).await, Err(BlobError::NotFound { .. })),
        "half-written blob left behind"
    );
    store
        .put_bytes(&key, Bytes::from_static(b"keep me"))
        .await
        .expect("put");
    assert!(store.put(&key, failing()).await.is_err());
    assert_eq!(
        store.get_bytes(&key).await.expect("get"),
        Bytes::from_static(b"keep me"),
        "failed put clobbered the old blob"
    );
    let listed = store.list(&key).await.expect("list");
    assert_eq!(
        listed.len(),
        1,
        "temporary files must not show in listings: {listed:?}"
    );
    store.delete(&key).await.expect("delete");
}

/// Listing returns exactly the blobs under a prefix, sorted by key.
pub async fn list_by_prefix(store: &dyn BlobStore) {
    let base = unique("list");
    let keys = [
        format!("{base}/b"),
        format!("{base}/a/1"),
        format!("{base}/a/2"),
        format!("{base}x/other"),
    ];
    for k in &keys {
        store
            .put_bytes(k, Bytes::from_static(b"x"))
            .await
            .expect("put");
    }
    let listed: Vec<String> = store
        .list(&format!("{base}/"))
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        listed,
        vec![
            format!("{base}/a/1"),
            format!("{base}/a/2"),
            format!("{base}/b")
        ]
    );
    assert!(
        store
            .list(&format!("{base}/nothing/"))
            .await
            .expect("list")
            .is_empty()
    );
    for k in &keys {
        store.delete(k).await.expect("delete");
    }
    assert!(
        store
            .list(&format!("{base}/"))
            .await
            .expect("list")
            .is_empty()
    );
}

/// Keys that could escape the store's root are refused by every operation.
pub async fn rejects_hostile_keys(store: &dyn BlobStore) {
    for key in [
        "../escape",
        "a/../../b",
        "/etc/passwd",
        "a\0b",
        "",
        "a//b",
        "a\\..\\b",
    ] {
        let put = store.put_bytes(key, Bytes::from_static(b"x")).await;
        assert!(
            matches!(put, Err(BlobError::InvalidKey { .. })),
            "put accepted {key:?}: {put:?}"
        );
        assert!(
            matches!(
                store.get(key, None).await,
                Err(BlobError::InvalidKey { .. })
            ),
            "get accepted {key:?}"
        );
        assert!(
            matches!(store.head(key).await, Err(BlobError::InvalidKey { .. })),
            "head accepted {key:?}"
        );
        assert!(
            matches!(store.delete(key).await, Err(BlobError::InvalidKey { .. })),
            "delete accepted {key:?}"
        );
    }
    assert!(matches!(
        store.list("../").await,
        Err(BlobError::InvalidKey { .. })
    ));
}

/// A store that declares presigning returns URLs naming the key; one that does not says
/// `NotSupported`.
pub async fn presign_as_declared(store: &dyn BlobStore) {
    let key = unique("presign");
    let ttl = Duration::from_secs(300);
    if store.capabilities().presign {
        for m in [PresignMethod::Put, PresignMethod::Get] {
            let url = store.presign(m, &key, ttl).await.expect("presign");
            assert!(
                url.starts_with("http://") || url.starts_with("https://"),
                "not a URL: {url}"
            );
        }
        assert!(matches!(
            store.presign(PresignMethod::Get, "../x", ttl).await,
            Err(BlobError::InvalidKey { .. })
        ));
    } else {
        let r = store.presign(PresignMethod::Put, &key, ttl).await;
        assert!(
            matches!(r, Err(BlobError::NotSupported { .. })),
            "undeclared presign must be NotSupported: {r:?}"
        );
    }
}
