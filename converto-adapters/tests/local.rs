//! `LocalBlobStore` against the blob conformance suite, plus what only a file system can get
//! wrong: symbolic links, temporary files, concurrent writers.
#![cfg(feature = "local")]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use converto_adapters::local::LocalBlobStore;
use converto_core::blob::{BlobError, BlobStore, BlobStoreExt, ByteStream};
use converto_core::testkit::blob::run_blob_suite;
use futures::StreamExt;

/// Refused as a link should be: the key is invalid, or there is nothing there.
fn refused<T>(r: &Result<T, BlobError>) -> bool {
    matches!(
        r,
        Err(BlobError::InvalidKey { .. } | BlobError::NotFound { .. })
    )
}

async fn open(dir: &Path) -> LocalBlobStore {
    LocalBlobStore::open(dir).await.expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    // Each check gets a fresh root; the directories live until the test ends.
    let dirs: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());
    run_blob_suite(async || {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        dirs.lock().expect("lock").push(dir);
        Arc::new(store) as Arc<dyn BlobStore>
    })
    .await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_are_never_followed() {
    let root = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("secret"), b"top secret").expect("write");
    let store = open(root.path()).await;
    std::os::unix::fs::symlink(outside.path(), root.path().join("link")).expect("symlink");
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("file-link"))
        .expect("symlink");

    for key in ["link/secret", "file-link"] {
        let got = store.get(key, None).await;
        assert!(
            refused(&got),
            "get followed a link: {key}: {:?}",
            got.map(|r| r.meta)
        );
        let head = store.head(key).await;
        assert!(refused(&head), "head followed a link: {key}: {head:?}");
        let put = store.put_bytes(key, Bytes::from_static(b"pwned")).await;
        assert!(refused(&put), "put followed a link: {key}: {put:?}");
        let del = store.delete(key).await;
        assert!(
            del.is_ok() || refused(&del),
            "delete failed oddly: {key}: {del:?}"
        );
    }
    let put = store
        .put_bytes("link/new", Bytes::from_static(b"pwned"))
        .await;
    assert!(refused(&put), "put through a linked directory: {put:?}");
    let put = store
        .put_bytes("link/deeper/new", Bytes::from_static(b"pwned"))
        .await;
    assert!(refused(&put), "put through a linked directory: {put:?}");
    assert_eq!(
        std::fs::read(outside.path().join("secret")).expect("read"),
        b"top secret",
        "the file outside the root changed"
    );
    assert!(!outside.path().join("new").exists());
    assert!(!outside.path().join("deeper").exists());
    let listed = store.list("").await.expect("list");
    assert!(listed.is_empty(), "links listed: {listed:?}");
    let listed = store.list("link/").await;
    assert!(
        listed.as_ref().map_or(true, Vec::is_empty),
        "listed through a link: {listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_files_are_invisible_and_cleaned_up() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(root.path()).await);
    let temp_files = || {
        std::fs::read_dir(root.path().join(".tmp"))
            .expect("read .tmp")
            .count()
    };

    // An upload that sends one chunk, then stalls.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
    tx.send(Ok(Bytes::from(vec![7u8; 10_000])))
        .await
        .expect("send");
    let body: ByteStream = tokio_stream::wrappers::ReceiverStream::new(rx).boxed();
    let upload = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.put("pending/blob", body).await })
    };
    let mut waited = 0;
    while temp_files() == 0 {
        waited += 1;
        assert!(waited < 200, "the upload never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.list("").await.expect("list").is_empty());
    assert!(matches!(
        store.head("pending/blob").await,
        Err(BlobError::NotFound { .. })
    ));
    // The client goes away: the put future is dropped half way.
    upload.abort();
    let _ = upload.await;
    drop(tx);
    assert_eq!(
        temp_files(),
        0,
        "an abandoned upload left its temporary file"
    );

    // The temporary directory cannot be reached through keys.
    for key in [".tmp/x", ".tmp"] {
        assert!(matches!(
            store.put_bytes(key, Bytes::from_static(b"x")).await,
            Err(BlobError::InvalidKey { .. })
        ));
    }
    assert!(store.list(".tmp/").await.expect("list").is_empty());
    assert!(store.list(".t").await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_one_complete_blob() {
    const WRITERS: u8 = 8;
    const SIZE: usize = 512 * 1024;
    let root = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(root.path()).await);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let data = Bytes::from(vec![w; SIZE]);
            let chunks: Vec<std::io::Result<Bytes>> = (0..SIZE)
                .step_by(16 * 1024)
                .map(|i| Ok(data.slice(i..(i + 16 * 1024).min(SIZE))))
                .collect();
            store
                .put("shared/key", futures::stream::iter(chunks).boxed())
                .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("put");
    }
    let got = store.get_bytes("shared/key").await.expect("get");
    assert_eq!(got.len(), SIZE);
    let first = got[0];
    assert!(first < WRITERS);
    assert!(
        got.iter().all(|&b| b == first),
        "the blob mixes several writers"
    );
    let listed = store.list("").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        std::fs::read_dir(root.path().join(".tmp"))
            .expect("read .tmp")
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_survive_reopening_and_delete_prunes_directories() {
    let root = tempfile::tempdir().expect("tempdir");
    let meta = {
        let store = open(root.path()).await;
        store
            .put_bytes("a/b/c", Bytes::from_static(b"persisted"))
            .await
            .expect("put")
    };
    let store = open(root.path()).await;
    assert_eq!(store.head("a/b/c").await.expect("head"), meta);
    assert_eq!(
        store.get_bytes("a/b/c").await.expect("get"),
        Bytes::from_static(b"persisted")
    );
    // A key and a key below it cannot both be blobs on a file system: typed errors, no damage.
    assert!(matches!(
        store.put_bytes("a/b", Bytes::from_static(b"x")).await,
        Err(BlobError::InvalidKey { .. })
    ));
    assert!(matches!(
        store.put_bytes("a/b/c/d", Bytes::from_static(b"x")).await,
        Err(BlobError::InvalidKey { .. })
    ));
    assert!(matches!(
        store.head("a/b/c/d").await,
        Err(BlobError::NotFound { .. })
    ));
    assert!(matches!(
        store.head("a/b").await,
        Err(BlobError::NotFound { .. })
    ));
    let long = format!("a/{}", "x".repeat(300));
    assert!(matches!(
        store.put_bytes(&long, Bytes::from_static(b"x")).await,
        Err(BlobError::InvalidKey { .. })
    ));
    store.delete("a/b/c").await.expect("delete");
    assert!(!root.path().join("a").exists(), "empty directories remain");
    store.ping().await.expect("ping");
}
