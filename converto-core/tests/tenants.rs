//! Tenant isolation at the engine: a tenant's view answers another tenant's ids exactly as
//! unknown ones, lists only its own, and keeps its blobs under its own prefix.

use bytes::Bytes;
use converto_core::intake::{TicketProof, UploadTarget};
use converto_core::store::ListQuery;
use converto_core::testkit::scripted_registry;
use converto_core::{
    BlobStoreExt, ByteStream, ConversionId, Engine, EngineError, Format, Status, Submission,
    SubmitInput,
};
use futures::StreamExt;

fn body(bytes: &'static [u8]) -> ByteStream {
    futures::stream::once(async move { Ok(Bytes::from_static(bytes)) }).boxed()
}

fn not_found<T: std::fmt::Debug>(r: Result<T, EngineError>) {
    assert!(
        matches!(r, Err(EngineError::NotFound { .. })),
        "expected NotFound, got {r:?}"
    );
}

#[tokio::test]
async fn another_tenants_ids_are_unknown_ids() {
    let (registry, _) = scripted_registry();
    let engine = Engine::builder()
        .registry(registry)
        .build()
        .expect("engine");
    let (acme, globex) = (engine.tenant("acme"), engine.tenant("globex"));
    let workers = engine.start_workers();
    let submitted = acme
        .submit(Submission::new(
            Format::new("upper").expect("format"),
            SubmitInput::bytes(Bytes::from_static(b"secret"), Some("s.txt".into())),
        ))
        .await
        .expect("submit");
    let id = submitted.conversion.id;
    let done = acme.wait(id).await.expect("wait");
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    assert_eq!(done.tenant, "acme");
    let name = done.artifacts[0].name.clone();

    // Globex sees nothing of it, exactly as for an id nobody has.
    for probe in [id, ConversionId::new()] {
        not_found(globex.get(probe).await);
        not_found(globex.cancel(probe).await);
        not_found(globex.delete(probe).await);
        not_found(globex.watch(probe).await.map(|_| ()));
        not_found(globex.wait(probe).await);
        not_found(globex.open_artifact(probe, &name, None).await.map(|_| ()));
    }
    assert!(
        globex
            .list(&ListQuery::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    let mine = acme.list(&ListQuery::default()).await.expect("list");
    assert_eq!(mine.items.len(), 1);

    // Every blob of acme's conversion is under acme's prefix.
    let blobs = &engine.backends().blobs;
    let all = blobs.list("").await.expect("list");
    assert!(!all.is_empty());
    for meta in all.iter().filter(|m| !m.key.starts_with("system/")) {
        assert!(meta.key.starts_with("tenants/acme/"), "{}", meta.key);
    }

    // Uploads: globex can neither use acme's upload nor acme's ticket.
    let ticket = acme.create_upload().await.expect("ticket");
    let UploadTarget::Ticket(t) = &ticket.target else {
        panic!("memory blobs cannot presign");
    };
    let proof = TicketProof {
        expires: Some(t.expires),
        max_bytes: Some(t.max_bytes),
        signature: Some(&t.signature),
    };
    assert!(matches!(
        globex
            .receive_upload(ticket.upload_id, proof, None, body(b"x"))
            .await,
        Err(EngineError::UploadTicket(_))
    ));
    acme.receive_upload(ticket.upload_id, proof, None, body(b"data"))
        .await
        .expect("upload");
    assert!(matches!(
        globex.upload_input(ticket.upload_id, None).await,
        Err(EngineError::UploadNotFound { .. })
    ));
    let input = acme
        .upload_input(ticket.upload_id, None)
        .await
        .expect("input");
    assert!(matches!(input, SubmitInput::Blob { .. }));
    // And deleting is acme's alone.
    acme.delete(id).await.expect("delete");
    assert!(
        blobs
            .list("tenants/acme/conversions/")
            .await
            .expect("list")
            .is_empty()
    );
    let _ = blobs.get_bytes("system/upload-secret").await;
    workers.shutdown().await.expect("shutdown");
}
