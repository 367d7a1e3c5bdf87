//! Any bytes given to the frame and record decoders: never a panic, never a read out of
//! bounds, and whatever decodes re-encodes to the same bytes.
#![no_main]

use afterlog::format::{Record, decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let segment_id = 7;
    if let Ok(Some(frame)) = decode_frame(data, segment_id) {
        assert!(frame.len() <= data.len());
        if let Ok(record) = Record::decode(frame.kind, frame.payload) {
            let mut payload = Vec::new();
            record.encode(&mut payload);
            assert_eq!(payload, frame.payload);
            let mut again = Vec::new();
            encode_frame(&mut again, segment_id, frame.seq, frame.kind, frame.sync_delta, &payload);
            assert_eq!(&again[..], &data[..frame.len()]);
        }
    }
    // The payload decoders on their own, for every kind.
    if let Some((&kind, payload)) = data.split_first() {
        if let Some(kind) = afterlog::format::RecordKind::from_u8(kind) {
            let _ = Record::decode(kind, payload);
        }
    }
});
