//! Intake through the engine: tickets, write-once uploads, staging with the size limit, the
//! janitor; no caller spells a blob key.

use std::time::Duration;

use bytes::Bytes;
use converto_core::intake::{TicketProof, UploadTarget};
use converto_core::testkit::scripted_registry;
use converto_core::{
    ByteStream, Engine, EngineConfig, EngineError, Format, Submission, SubmitInput,
};
use futures::StreamExt;

fn body(bytes: &'static [u8]) -> ByteStream {
    futures::stream::once(async move { Ok(Bytes::from_static(bytes)) }).boxed()
}

fn engine(config: EngineConfig) -> Engine {
    let (registry, _) = scripted_registry();
    Engine::builder()
        .registry(registry)
        .config(config)
        .build()
        .expect("engine")
}

#[tokio::test]
async fn uploads_need_their_ticket_are_written_once_and_bounded() {
    let engine = engine(EngineConfig::default().max_input_bytes(Some(10)));
    let ticket = engine.create_upload().await.expect("ticket");
    assert_eq!(ticket.max_bytes, 10);
    let UploadTarget::Ticket(t) = &ticket.target else {
        panic!("memory blobs cannot presign: {ticket:?}");
    };
    let proof = TicketProof {
        expires: Some(t.expires),
        max_bytes: Some(t.max_bytes),
        signature: Some(&t.signature),
    };
    // No ticket, a forged one, a widened size: refused before any byte is stored.
    for bad in [
        TicketProof::default(),
        TicketProof {
            signature: Some("00"),
            ..proof
        },
        TicketProof {
            max_bytes: Some(1 << 40),
            ..proof
        },
    ] {
        let err = engine
            .receive_upload(ticket.upload_id, bad, None, body(b"abc"))
            .await
            .expect_err("refused");
        assert!(matches!(err, EngineError::UploadTicket(_)), "{err:?}");
    }
    assert!(matches!(
        engine.upload_input(ticket.upload_id, None).await,
        Err(EngineError::UploadNotFound { .. })
    ));
    // Over the limit: refused, nothing kept.
    let err = engine
        .receive_upload(ticket.upload_id, proof, None, body(b"more than ten bytes"))
        .await
        .expect_err("too large");
    assert!(
        matches!(err, EngineError::InputTooLarge { limit: 10 }),
        "{err:?}"
    );
    assert!(matches!(
        engine.upload_input(ticket.upload_id, None).await,
        Err(EngineError::UploadNotFound { .. })
    ));
    // Within it: stored once.
    let n = engine
        .receive_upload(ticket.upload_id, proof, Some(5), body(b"hello"))
        .await
        .expect("upload");
    assert_eq!(n, 5);
    let again = engine
        .receive_upload(ticket.upload_id, proof, None, body(b"other"))
        .await
        .expect_err("written once");
    assert!(
        matches!(again, EngineError::UploadExists { .. }),
        "{again:?}"
    );
    // And converted from its id.
    let input = engine
        .upload_input(ticket.upload_id, Some("a.txt".into()))
        .await
        .expect("input");
    let sub = engine
        .submit(Submission::new(
            Format::new("upper").expect("format"),
            input,
        ))
        .await
        .expect("submit");
    assert!(sub.created);
}

#[tokio::test]
async fn staging_is_bounded_and_unclaimed_files_are_swept() {
    let engine = engine(
        EngineConfig::default()
            .max_input_bytes(Some(8))
            .upload_ttl(Duration::ZERO)
            .janitor(Duration::ZERO, Duration::from_secs(600)),
    );
    assert!(matches!(
        engine.stage_input(body(b"nine bytes")).await,
        Err(EngineError::InputTooLarge { limit: 8 })
    ));
    assert!(matches!(
        engine.stage_input(body(b"")).await,
        Err(EngineError::EmptyInput)
    ));
    let kept = engine.stage_input(body(b"abc")).await.expect("stage");
    let _abandoned = engine.stage_input(body(b"xyz")).await.expect("stage");
    let c = engine
        .submit(Submission::new(
            Format::new("upper").expect("format"),
            SubmitInput::staged(kept, Some("k.txt".into())),
        ))
        .await
        .expect("submit");
    // The abandoned file goes; the submitted one is the conversion's now and stays.
    assert_eq!(engine.remove_unclaimed_uploads().await.expect("sweep"), 1);
    assert_eq!(engine.remove_unclaimed_uploads().await.expect("sweep"), 0);
    let workers = engine.start_workers();
    let done = engine.wait(c.conversion.id).await.expect("wait");
    assert_eq!(done.status, converto_core::Status::Succeeded, "{done:?}");
    workers.shutdown().await.expect("shutdown");
}
