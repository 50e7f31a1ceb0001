//! The processor core's rows do not depend on where batches end: the scripted workload
//! through `PartitionCore` in batches of 1, 7, 100 and 5,000 events yields the oracle's rows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chatpipe_processor::core::{PartitionCore, Rules};
use chatpipe_processor::state::PartitionState;
use chatpipe_tests::chat::{diff, oracle, scripted, Folder, Input, OracleRules, Outputs};

fn rules(r: &OracleRules) -> Rules {
    Rules {
        blocked_senders: [r.blocked_sender].into_iter().collect(),
        allowed_kinds: Some(
            chatpipe_common::event::MessageKind::ALL.iter().copied().filter(|k| *k != r.disallowed_kind).collect(),
        ),
        max_body_bytes: r.max_body_bytes,
        compress_min_bytes: r.compress_min_bytes,
        fanout_max_members: r.fanout_max_members,
        window_ms: r.window_ms,
        correction_horizon_ms: r.correction_horizon_ms,
        grace_ms: 5_000,
        ..Rules::default()
    }
}

#[test]
fn rows_are_the_same_whatever_the_batch_size() {
    let r = OracleRules::default();
    let now = chatpipe_tests::now_ms();
    let w = scripted(4, 2_500, now, &r, 22);
    let expected = oracle(&w, &r);
    for batch in [5_000usize, 100, 7, 1] {
        let mut folder = Folder::default();
        for (p, inputs) in w.partitions.iter().enumerate() {
            let mut core = PartitionCore::new(p as i32, rules(&r), PartitionState::default());
            for (i, chunk) in inputs.chunks(batch).enumerate() {
                for (j, input) in chunk.iter().enumerate() {
                    // a fresh state has applied offset 0: input starts after it
                    let offset = (i * batch + j + 1) as i64;
                    match input {
                        Input::Event(e) => {
                            core.apply(offset, e);
                        }
                        Input::Garbage(_) => core.reject(offset, "undecodable", String::new()),
                    }
                }
                let (out, _) = core.finish_batch(now);
                for m in out.mutations() {
                    folder.mutation(m);
                }
            }
            // input stopped: the idle watermark closes the last windows
            core.advance_idle(now + 10 * r.window_ms);
            for m in core.finish_batch(now).0.mutations() {
                folder.mutation(m);
            }
        }
        let only_rows = |o: &Outputs| Outputs { rows: o.rows.clone(), ..Outputs::default() };
        let (want, got) = (only_rows(&expected), only_rows(&folder.out));
        assert!(want == got, "batch {batch}:\n{}", diff(&want, &got));
    }
}
