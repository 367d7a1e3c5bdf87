//! Helpers shared by the integration tests.
#![allow(dead_code)]

use afterlog::format::{
    Ack, AckOutcome, Attempt, Cancel, CancelTarget, Publish, PublishEntry, Record,
};
use afterlog::log::{Log, LogOptions, Position};
use afterlog::{EventId, JobId};

/// Small segments so tests roll often; synchronous preparation so storage operations happen
/// in a deterministic order.
pub fn small_options() -> LogOptions {
    LogOptions {
        segment_bytes: 4096,
        prepare_in_background: false,
        ..LogOptions::default()
    }
}

/// An owned copy of a record, to compare what was written with what recovery returns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owned {
    pub kind: u8,
    pub payload: Vec<u8>,
}

impl Owned {
    pub fn of(record: &Record<'_>) -> Owned {
        let mut payload = Vec::new();
        record.encode(&mut payload);
        Owned {
            kind: record.kind() as u8,
            payload,
        }
    }
}

/// The `i`th record of a deterministic mix of kinds.
pub fn sample_record(i: u64, body: &[u8]) -> Owned {
    let id = EventId(i + 1);
    let record = match i % 4 {
        0 => {
            let entries = [PublishEntry {
                id,
                due_ms: 1_000 + i as i64,
                name: "user.joined",
                body,
            }];
            return Owned::of(&Record::Publish(Publish::new(None, 7, &entries)));
        }
        1 => Record::Attempt(Attempt {
            event: id,
            attempt: 1,
            started_ms: i as i64,
        }),
        2 => Record::Ack(Ack {
            event: id,
            attempt: 1,
            acked_ms: i as i64,
            outcome: AckOutcome::Handled,
        }),
        _ => Record::Cancel(Cancel {
            target: CancelTarget::Job(JobId(i)),
            cancelled_ms: 3,
        }),
    };
    Owned::of(&record)
}

/// Decodes an owned record and appends it.
pub fn append_owned(log: &Log, owned: &Owned) -> afterlog::Result<Position> {
    let kind = afterlog::format::RecordKind::from_u8(owned.kind).expect("valid kind");
    let record = Record::decode(kind, &owned.payload).expect("valid payload");
    log.append(&record)
}

/// Every record recovery hands up, in order.
pub fn collect(
    positions: &mut Vec<Position>,
) -> impl FnMut(Position, &Record<'_>) -> afterlog::Result<()> + '_ {
    move |p, _r| {
        positions.push(p);
        Ok(())
    }
}
pub mod hooked;
pub mod workload;

/// Runs a future to its end on this thread: the engine's futures need no runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}
