//! Bounded fuzzing of every decoder of peer input, as property tests that run on
//! stable in CI: arbitrary bytes as each wire message, and structured messages with
//! hostile fields (layouts with absurd lengths, tensors whose sizes disagree, task
//! specs mutated byte by byte, SecAgg messages of any shape) through the conversions
//! the agent and the coordinator apply. Every one must come back as a value or an
//! error, never a panic.

use crate::convert::{decode_tensor, job_from_wire, layout_from_wire, summary_from_wire};
use crate::secagg::{
    advertisement_from_wire, confirmation_from_wire, masked_input_from_wire, share_keys_from_wire,
    unmask_request_from_wire, unmask_response_from_wire,
};
use crate::v1;
use proptest::prelude::*;
use prost::Message;

/// A valid task spec, then mutated: most mutations are caught by the JSON parser,
/// some reach the option checks.
fn spec_text() -> impl Strategy<Value = String> {
    let base = r#"{"kind":"demand","holdout_days":28,"horizon_days":28,"validation_days":28,"interval":0.8,"groups":2}"#;
    proptest::collection::vec((0usize..base.len(), any::<u8>()), 0..4).prop_map(move |edits| {
        let mut bytes = base.as_bytes().to_vec();
        for (i, b) in edits {
            bytes[i] = b;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn layout() -> impl Strategy<Value = v1::ModelLayout> {
    let segment = (
        ".{0,6}",
        prop_oneof![0u64..40, Just(u64::MAX), Just(1 << 62)],
        any::<bool>(),
    )
        .prop_map(|(name, len, regularized)| v1::Segment {
            name,
            len,
            regularized,
        });
    proptest::collection::vec(segment, 0..4).prop_map(|segments| v1::ModelLayout { segments })
}

fn tensor() -> impl Strategy<Value = v1::Tensor> {
    (
        -1i32..4,
        prop_oneof![0u64..50, Just(u64::MAX)],
        proptest::collection::vec(any::<u8>(), 0..200),
        prop_oneof![
            Just(Vec::new()),
            proptest::collection::vec(any::<u8>(), 0..64)
        ],
    )
        .prop_map(|(dtype, len, data, indices)| v1::Tensor {
            dtype,
            len,
            data,
            indices,
        })
}

/// What an agent does with a training task: the layout, the model, the job.
fn agent_reads(t: &v1::TrainTask) {
    if let Ok(layout) = layout_from_wire(t.layout.as_ref()) {
        if let Some(g) = &t.global {
            let _ = decode_tensor(g, layout.len(), 1 << 20);
        }
    }
    let _ = job_from_wire(t.job.as_ref());
}

/// Cases per target: 512 in the test suite; CI's fuzz step sets
/// `FEDRETAIL_FUZZ_CASES` for a longer bounded run.
fn cases() -> u32 {
    std::env::var("FEDRETAIL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_as_any_wire_message_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(r) = v1::PollTaskResponse::decode(bytes.as_slice()) {
            if let Some(v1::poll_task_response::Outcome::Train(t)) = &r.outcome {
                agent_reads(t);
            }
        }
        if let Ok(u) = v1::SubmitUpdateRequest::decode(bytes.as_slice()) {
            if let Some(t) = &u.update {
                let _ = decode_tensor(t, 16, 1 << 20);
            }
        }
        if let Ok(r) = v1::SubmitReadyRequest::decode(bytes.as_slice()) {
            if let Some(v1::submit_ready_request::Answer::TableSummary(s)) = &r.answer {
                let _ = summary_from_wire(s);
            }
        }
        if let Ok(m) = v1::SubmitSecAggRequest::decode(bytes.as_slice()) {
            secagg_reads(m);
        }
        let _ = v1::RegisterStoreRequest::decode(bytes.as_slice());
        let _ = v1::SubmitEvaluationRequest::decode(bytes.as_slice());
        let _ = v1::SecAggStep::decode(bytes.as_slice()).map(|s| match s.step {
            Some(v1::sec_agg_step::Step::Unmask(r)) => {
                let _ = unmask_request_from_wire(r);
            }
            Some(v1::sec_agg_step::Step::ShareKeys(n)) => {
                for a in &n.advertisements {
                    let _ = advertisement_from_wire(a);
                }
            }
            _ => {}
        });
    }

    #[test]
    fn a_hostile_training_task_is_refused_or_read(layout in layout(), global in tensor(), spec in spec_text(), job_id in ".{0,8}") {
        let t = v1::TrainTask {
            layout: Some(layout),
            global: Some(global),
            job: Some(v1::JobContext { job_id, task_spec: spec, ..Default::default() }),
            ..Default::default()
        };
        agent_reads(&t);
        // And the same after a trip through the wire format.
        let back = v1::TrainTask::decode(t.encode_to_vec().as_slice()).unwrap();
        agent_reads(&back);
    }

    #[test]
    fn a_hostile_table_summary_is_refused_or_read(text in ".{0,80}", edit in 0usize..60, b in any::<u8>()) {
        let _ = summary_from_wire(&text);
        let valid = r#"{"rows":10,"columns":[{"name":"a","numeric":{"count":3,"sum":1.0,"sum_sq":2.0}}]}"#;
        let mut bytes = valid.as_bytes().to_vec();
        let at = edit.min(bytes.len() - 1);
        bytes[at] = b;
        let _ = summary_from_wire(&String::from_utf8_lossy(&bytes));
    }
}

fn secagg_reads(m: v1::SubmitSecAggRequest) {
    use v1::submit_sec_agg_request::Message as M;
    match m.message {
        Some(M::Advertisement(a)) => {
            let _ = advertisement_from_wire(&a);
        }
        Some(M::ShareKeys(s)) => {
            let _ = share_keys_from_wire(s);
        }
        Some(M::MaskedInput(i)) => {
            let _ = masked_input_from_wire(i);
        }
        Some(M::Unmask(u)) => {
            let _ = unmask_response_from_wire(u);
        }
        Some(M::Confirmation(c)) => {
            let _ = confirmation_from_wire(&c);
        }
        None => {}
    }
}
