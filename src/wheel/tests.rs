use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

impl<T: Copy> Wheel<T> {
    /// Walks every list and the free list, asserting the invariants of the module doc.
    fn check_invariants(&self) {
        let now_ms = self.now_ms;
        let mut live = 0usize;
        let mut far_live = 0usize;
        for slot_number in 0..LEVELS * SLOTS_PER_LEVEL {
            let (level, slot) = (slot_number / SLOTS_PER_LEVEL, slot_number % SLOTS_PER_LEVEL);
            let bit = (self.occupied[level] >> slot) & 1 == 1;
            let heads = &self.heads[slot_number * WAYS..(slot_number + 1) * WAYS];
            let empty = heads.iter().all(|&head| head == NIL);
            assert_eq!(
                bit, !empty,
                "level {level} slot {slot}: bit {bit}, heads {heads:?}"
            );
        }
        for list in 0..LISTS {
            let head = self.heads[list];
            let marker = LIST_MARKER_BASE + list as u32;
            let mut prev = marker;
            let mut index = head;
            if head == NIL {
                assert_eq!(self.tails[list], NIL, "list {list}: empty with a tail");
                continue;
            }
            while index != marker {
                assert!(
                    index < LIST_MARKER_BASE,
                    "list {list}: link {index} is not an entry"
                );
                let entry = &self.links[index as usize];
                assert_eq!(
                    entry.prev, prev,
                    "list {list}: entry {index} has a wrong prev"
                );
                let due_ms = self.entry_due_ms(index);
                match list {
                    READY_LIST => {
                        assert!(due_ms <= now_ms, "ready entry due {due_ms} > now {now_ms}");
                        let bound = self.ready_due_min_ms;
                        assert!(bound <= due_ms, "ready bound {bound} > due {due_ms}");
                    }
                    OVERFLOW_LIST => {
                        assert!(
                            due_ms > now_ms,
                            "overflow entry due {due_ms} <= now {now_ms}"
                        );
                        let level = level_for(now_ms, due_ms);
                        assert!(
                            level >= LEVELS,
                            "overflow entry due {due_ms} at level {level}"
                        );
                        let bound = self.overflow_due_min_ms;
                        assert!(bound <= due_ms, "overflow bound {bound} > due {due_ms}");
                        assert!(bound > now_ms, "overflow bound {bound} <= now {now_ms}");
                    }
                    _ => {
                        let slot_number = list / WAYS;
                        let (level, slot) =
                            (slot_number / SLOTS_PER_LEVEL, slot_number % SLOTS_PER_LEVEL);
                        let way = index as usize % WAYS;
                        assert_eq!(
                            way,
                            list % WAYS,
                            "entry {index} in the wrong way of its slot"
                        );
                        assert!(due_ms > now_ms, "slot entry due {due_ms} <= now {now_ms}");
                        let (due_level, due_slot) =
                            (level_for(now_ms, due_ms), slot_for(due_ms, level));
                        assert_eq!(
                            (due_level, due_slot),
                            (level, slot),
                            "due {due_ms} (now {now_ms}) in the wrong slot"
                        );
                    }
                }
                if due_ms >= DUE_FAR {
                    far_live += 1;
                }
                live += 1;
                assert!(live <= self.links.len(), "list {list} has a cycle");
                prev = index;
                index = entry.next;
            }
            assert_eq!(self.tails[list], prev, "list {list}: wrong tail");
        }
        assert_eq!(live, self.len, "entries in lists vs len");
        assert_eq!(
            far_live,
            self.far_due_ms.len(),
            "far deadlines vs far table"
        );
        let mut free = 0usize;
        let mut index = self.free_head;
        while index != NIL {
            let entry = &self.links[index as usize];
            assert_eq!(
                entry.prev, FREE,
                "free entry {index} has prev {}",
                entry.prev
            );
            free += 1;
            assert!(free <= self.links.len(), "the free list has a cycle");
            index = entry.next;
        }
        assert_eq!(free + live, self.links.len(), "free + live vs slab length");
        assert_eq!(
            self.timers.len(),
            self.links.len(),
            "payload vs link array length"
        );
    }
}

/// Advances and returns what was yielded, checking the invariants after.
fn advance(wheel: &mut Wheel<u64>, now_ms: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    wheel.advance_into(now_ms, &mut out);
    wheel.check_invariants();
    out
}

fn sorted(mut fired: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    fired.sort_unstable();
    fired
}

#[test]
fn entry_of_a_u64_wheel_is_24_bytes() {
    assert_eq!(Wheel::<u64>::ENTRY_BYTES, 24);
    assert_eq!(size_of::<TimerHandle>(), 8);
}

#[test]
fn due_in_the_past_or_now_fires_at_the_next_advance() {
    let mut wheel = Wheel::new(1_000);
    wheel.insert(5, 1);
    wheel.insert(1_000, 2);
    wheel.insert(0, 3);
    wheel.check_invariants();
    assert_eq!(wheel.next_deadline_ms(), Some(0));
    assert_eq!(
        sorted(advance(&mut wheel, 1_000)),
        vec![(0, 3), (5, 1), (1_000, 2)]
    );
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_deadline_ms(), None);
}

#[test]
fn an_earlier_now_moves_nothing_back_and_yields_only_what_is_due() {
    let mut wheel = Wheel::new(1_000);
    wheel.insert(5, 1);
    wheel.insert(1_000, 2);
    wheel.insert(1_001, 3);
    assert_eq!(advance(&mut wheel, 999), vec![(5, 1)]);
    assert_eq!(wheel.now_ms(), 1_000);
    assert_eq!(advance(&mut wheel, 1_000), vec![(1_000, 2)]);
    assert_eq!(advance(&mut wheel, 1_001), vec![(1_001, 3)]);
}

/// After a partial expiry of the ready list (a time before the wheel's, as after a backward
/// step of the wall clock), the next deadline is the earliest timer left, not the deadline of
/// one already yielded: a caller that sleeps until it must not wake at once, again and again.
#[test]
fn a_partial_expiry_of_the_ready_list_raises_the_next_deadline() {
    let mut wheel = Wheel::new(3_600_000);
    wheel.insert(1_000, 1);
    wheel.insert(1_800_000, 2);
    assert_eq!(wheel.next_deadline_ms(), Some(1_000));
    assert_eq!(advance(&mut wheel, 1_000), vec![(1_000, 1)]);
    assert_eq!(wheel.next_deadline_ms(), Some(1_800_000));
    assert_eq!(advance(&mut wheel, 1_799_999), vec![]);
    assert_eq!(advance(&mut wheel, 1_800_000), vec![(1_800_000, 2)]);
    assert_eq!(wheel.next_deadline_ms(), None);
}

#[test]
fn nothing_fires_a_millisecond_early() {
    let mut wheel = Wheel::new(0);
    for due_ms in [1, 63, 64, 65, 4_095, 4_096, 262_144, 1 << 30, (1 << 36) - 1] {
        wheel.insert(due_ms, due_ms);
    }
    let mut now_ms = 0;
    while let Some(next_ms) = wheel.next_deadline_ms() {
        // Walk to the deadline, then check the millisecond before it yields nothing more.
        let fired = advance(&mut wheel, next_ms - 1);
        assert!(fired.iter().all(|&(due_ms, _)| due_ms < next_ms));
        for (due_ms, value) in advance(&mut wheel, next_ms) {
            assert_eq!((due_ms, value), (next_ms, next_ms), "now was {now_ms}");
        }
        now_ms = next_ms;
    }
    assert!(wheel.is_empty());
}

#[test]
fn far_future_deadlines_are_kept_exactly_and_fire_on_time() {
    let mut wheel = Wheel::new(0);
    let dues_ms = [
        WHEEL_SPAN_MS - 1,
        WHEEL_SPAN_MS,
        WHEEL_SPAN_MS + 5,
        1 << 40,
        DUE_FAR - 1,
        DUE_FAR,
        DUE_FAR + 1,
        1 << 60,
        u64::MAX - 1,
        u64::MAX,
    ];
    let handles: Vec<_> = dues_ms
        .iter()
        .map(|&due_ms| wheel.insert(due_ms, due_ms))
        .collect();
    wheel.check_invariants();
    for (&handle, &due_ms) in handles.iter().zip(&dues_ms) {
        assert_eq!(wheel.due_ms(handle), Some(due_ms));
    }
    for &due_ms in &dues_ms {
        let next_ms = wheel.next_deadline_ms().expect("entries left");
        assert!(next_ms <= due_ms, "next deadline {next_ms} after {due_ms}");
        assert_eq!(advance(&mut wheel, due_ms - 1), vec![], "before {due_ms}");
        assert_eq!(advance(&mut wheel, due_ms), vec![(due_ms, due_ms)]);
    }
    assert!(wheel.is_empty());
    assert!(wheel.far_due_ms.is_empty());
}

#[test]
fn one_advance_to_u64_max_yields_everything() {
    let mut wheel = Wheel::new(17);
    let mut expected = Vec::new();
    for (i, due_ms) in [0, 17, 18, 1 << 20, 1 << 37, 1 << 50, u64::MAX]
        .into_iter()
        .enumerate()
    {
        wheel.insert(due_ms, i as u64);
        expected.push((due_ms, i as u64));
    }
    assert_eq!(sorted(advance(&mut wheel, u64::MAX)), expected);
    // At the end of time every deadline is due.
    wheel.insert(u64::MAX, 7);
    wheel.insert(3, 8);
    assert_eq!(
        sorted(advance(&mut wheel, u64::MAX)),
        vec![(3, 8), (u64::MAX, 7)]
    );
}

#[test]
fn a_wheel_starting_near_the_end_of_time() {
    let mut wheel = Wheel::new(u64::MAX - 10);
    wheel.insert(u64::MAX, 1);
    wheel.insert(u64::MAX - 5, 2);
    assert_eq!(advance(&mut wheel, u64::MAX - 6), vec![]);
    assert_eq!(advance(&mut wheel, u64::MAX - 5), vec![(u64::MAX - 5, 2)]);
    assert_eq!(advance(&mut wheel, u64::MAX), vec![(u64::MAX, 1)]);
}

#[test]
fn stale_handles_are_rejected() {
    let mut wheel = Wheel::new(0);
    let fired = wheel.insert(10, 1);
    let cancelled = wheel.insert(20, 2);
    assert_eq!(wheel.cancel(cancelled), Some(2));
    assert_eq!(wheel.cancel(cancelled), None, "double cancel");
    assert_eq!(advance(&mut wheel, 10), vec![(10, 1)]);
    assert_eq!(wheel.cancel(fired), None, "cancel after fire");
    assert_eq!(wheel.due_ms(fired), None);
    // Both slab entries are reused, with new generations.
    let a = wheel.insert(30, 3);
    let b = wheel.insert(40, 4);
    let mut reused = [a.index, b.index];
    reused.sort_unstable();
    assert_eq!(reused, [0, 1]);
    assert_eq!(wheel.cancel(fired), None);
    assert_eq!(wheel.cancel(cancelled), None);
    assert_eq!(wheel.due_ms(cancelled), None);
    assert_eq!(wheel.len(), 2);
    assert_eq!(wheel.cancel(a), Some(3));
    assert_eq!(wheel.cancel(b), Some(4));
    wheel.check_invariants();
}

#[test]
fn a_handle_from_another_wheel_is_rejected_when_out_of_range() {
    let mut big = Wheel::new(0);
    let handles = big.extend((0..10).map(|i| (100, i)));
    let mut small = Wheel::<u64>::new(0);
    assert_eq!(small.cancel(handles[9]), None);
    assert_eq!(small.due_ms(handles[9]), None);
}

#[test]
fn the_generation_wraps_without_panicking() {
    let mut wheel = Wheel::new(0);
    let first = wheel.insert(5, 0);
    wheel.cancel(first);
    let mut last = first;
    for i in 1..=(1u64 << GENERATION_BITS) + 3 {
        last = wheel.insert(5, i);
        assert_eq!(last.index, 0);
        assert_eq!(wheel.cancel(last), Some(i));
    }
    assert_eq!(wheel.cancel(last), None);
    assert_eq!(wheel.timers.len(), 1, "one slab entry reused throughout");
}

#[test]
fn many_entries_in_one_slot() {
    let mut wheel = Wheel::new(0);
    // Level 0: all due at 50; level 2: all in the slot [8192, 12288).
    let same: Vec<_> = (0..5_000).map(|i| wheel.insert(50, i)).collect();
    let spread: Vec<_> = (0..5_000)
        .map(|i| wheel.insert(8_192 + i % 4_096, 10_000 + i))
        .collect();
    wheel.check_invariants();
    // Cancel the head, the tail and the middle of each list.
    for handles in [&same, &spread] {
        for &handle in [handles[0], handles[2_500], handles[4_999]].iter() {
            assert!(wheel.cancel(handle).is_some());
        }
    }
    wheel.check_invariants();
    assert_eq!(advance(&mut wheel, 49), vec![]);
    let fired = advance(&mut wheel, 50);
    assert_eq!(fired.len(), 4_997);
    assert!(fired.iter().all(|&(due_ms, _)| due_ms == 50));
    assert_eq!(
        wheel.next_deadline_ms(),
        Some(8_192),
        "start of the level-2 slot"
    );
    let fired = advance(&mut wheel, 10_000);
    assert!(
        fired
            .iter()
            .all(|&(due_ms, _)| (8_192..=10_000).contains(&due_ms))
    );
    let fired_rest = advance(&mut wheel, 12_287);
    assert_eq!(fired.len() + fired_rest.len(), 4_997);
    assert!(wheel.is_empty());
}

#[test]
fn one_millisecond_steps_yield_each_entry_at_its_deadline() {
    let mut wheel = Wheel::new(0);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut count_by_due = BTreeMap::new();
    for i in 0..3_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let due_ms = 1 + state % 20_000;
        wheel.insert(due_ms, i);
        *count_by_due.entry(due_ms).or_insert(0usize) += 1;
    }
    for now_ms in 1..=20_001 {
        let mut fired = 0;
        wheel.advance(now_ms, |due_ms, _| {
            assert_eq!(due_ms, now_ms);
            fired += 1;
        });
        assert_eq!(
            fired,
            count_by_due.get(&now_ms).copied().unwrap_or(0),
            "at {now_ms}"
        );
    }
    wheel.check_invariants();
    assert!(wheel.is_empty());
}

#[test]
fn huge_jumps_across_epochs() {
    let mut wheel = Wheel::new(0);
    let dues_ms = [3 << 36, (3 << 36) + 1, 7 << 36, (1 << 45) + 12_345, 1 << 52];
    for (i, &due_ms) in dues_ms.iter().enumerate() {
        wheel.insert(due_ms, i as u64);
    }
    assert_eq!(advance(&mut wheel, 2 << 36), vec![]);
    assert_eq!(
        sorted(advance(&mut wheel, (3 << 36) + 1)),
        vec![(3 << 36, 0), ((3 << 36) + 1, 1)]
    );
    assert_eq!(advance(&mut wheel, (1 << 45) + 12_344), vec![(7 << 36, 2)]);
    assert_eq!(advance(&mut wheel, 1 << 51), vec![((1 << 45) + 12_345, 3)]);
    assert_eq!(advance(&mut wheel, u64::MAX), vec![(1 << 52, 4)]);
}

#[test]
fn a_cancelled_far_timer_leaves_a_bound_that_is_only_early() {
    let mut wheel = Wheel::new(0);
    let near = wheel.insert(1 << 40, 1);
    wheel.insert(1 << 50, 2);
    assert_eq!(wheel.next_deadline_ms(), Some(1 << 40));
    wheel.cancel(near);
    let next_ms = wheel.next_deadline_ms().expect("one timer left");
    assert!(next_ms <= 1 << 50);
    assert_eq!(advance(&mut wheel, 1 << 45), vec![]);
    let next_ms_after = wheel.next_deadline_ms().expect("one timer left");
    assert!(
        next_ms_after > 1 << 45 && next_ms_after <= 1 << 50,
        "{next_ms_after}"
    );
    assert_eq!(advance(&mut wheel, 1 << 50), vec![(1 << 50, 2)]);
}

#[test]
fn advancing_to_the_next_deadline_converges_in_a_few_steps() {
    let due_ms = 123_456_789_012;
    let mut wheel = Wheel::new(1_000);
    wheel.insert(due_ms, 1);
    let mut steps = 0;
    loop {
        let next_ms = wheel.next_deadline_ms().expect("not fired yet");
        assert!(next_ms <= due_ms && next_ms > wheel.now_ms());
        steps += 1;
        if !advance(&mut wheel, next_ms).is_empty() {
            assert_eq!(next_ms, due_ms);
            break;
        }
    }
    assert!(steps <= LEVELS, "{steps} steps");
}

#[test]
fn slots_come_out_in_deadline_order() {
    let mut wheel = Wheel::new(0);
    for (i, due_ms) in [70_000, 5, 300, 64, 4_096, 1 << 30, 63]
        .into_iter()
        .enumerate()
    {
        wheel.insert(due_ms, i as u64);
    }
    let dues_ms: Vec<u64> = advance(&mut wheel, u64::MAX)
        .iter()
        .map(|&(d, _)| d)
        .collect();
    assert_eq!(dues_ms, vec![5, 63, 64, 300, 4_096, 70_000, 1 << 30]);
}

#[test]
fn timers_with_the_same_deadline_fire_together() {
    let mut wheel = Wheel::new(0);
    for value in 0..100 {
        wheel.insert(1_000_000, value);
    }
    assert_eq!(advance(&mut wheel, 999_999), vec![]);
    let fired = sorted(advance(&mut wheel, 1_000_000));
    assert_eq!(fired, (0..100).map(|v| (1_000_000, v)).collect::<Vec<_>>());
}

#[test]
fn extend_returns_handles_in_order() {
    let mut wheel = Wheel::with_capacity(100, 4);
    let entries = [(50, 1), (100, 2), (101, 3), (u64::MAX, 4)];
    let handles = wheel.extend(entries);
    assert_eq!(handles.len(), 4);
    for (&handle, &(due_ms, value)) in handles.iter().zip(&entries) {
        assert_eq!(wheel.due_ms(handle), Some(due_ms));
        assert_eq!(wheel.cancel(handle), Some(value));
    }
    assert!(wheel.is_empty());
    wheel.check_invariants();
}

#[derive(Clone, Debug)]
enum Op {
    /// Insert at `now + offset`, saturating.
    InsertAhead(u64),
    /// Insert at `now - back`, saturating.
    InsertBehind(u64),
    /// Insert at an absolute time.
    InsertAt(u64),
    /// Cancel the handle with this number (modulo handles issued), live or stale.
    Cancel(usize),
    /// Advance to `now + delta`, saturating.
    Advance(u64),
    /// Advance to an absolute time, possibly in the past.
    AdvanceTo(u64),
    /// Advance to what `next_deadline_ms` says.
    AdvanceToNextDeadline,
}

fn op() -> impl Strategy<Value = Op> {
    let offset = prop_oneof![0..70u64, 0..5_000u64, 0..1u64 << 24, 0..1u64 << 40];
    prop_oneof![
        6 => offset.clone().prop_map(Op::InsertAhead),
        1 => (0..10_000u64).prop_map(Op::InsertBehind),
        1 => any::<u64>().prop_map(Op::InsertAt),
        3 => any::<usize>().prop_map(Op::Cancel),
        4 => offset.prop_map(Op::Advance),
        1 => any::<u64>().prop_map(Op::AdvanceTo),
        2 => Just(Op::AdvanceToNextDeadline),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Against a map model: nothing early, nothing lost, nothing twice, handles and
    /// `next_deadline_ms` consistent.
    #[test]
    fn wheel_matches_a_map_model(
        start_ms in prop_oneof![Just(0u64), any::<u64>(), 0..1u64 << 45],
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        run_against_model(start_ms, ops)?;
    }
}

fn run_against_model(start_ms: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut wheel = Wheel::new(start_ms);
    // Model: timer number -> deadline, for live timers.
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut handles: Vec<TimerHandle> = Vec::new();
    for op in ops {
        let now_ms = wheel.now_ms();
        match op {
            Op::InsertAhead(offset) => insert(
                &mut wheel,
                &mut model,
                &mut handles,
                now_ms.saturating_add(offset),
            ),
            Op::InsertBehind(back) => insert(
                &mut wheel,
                &mut model,
                &mut handles,
                now_ms.saturating_sub(back),
            ),
            Op::InsertAt(due_ms) => insert(&mut wheel, &mut model, &mut handles, due_ms),
            Op::Cancel(n) => {
                if handles.is_empty() {
                    continue;
                }
                let number = n % handles.len();
                let handle = handles[number];
                let expected_due_ms = model.get(&(number as u64)).copied();
                prop_assert_eq!(wheel.due_ms(handle), expected_due_ms);
                let cancelled = wheel.cancel(handle);
                prop_assert_eq!(cancelled, expected_due_ms.map(|_| number as u64));
                model.remove(&(number as u64));
            }
            Op::Advance(delta) => {
                check_advance(&mut wheel, &mut model, now_ms.saturating_add(delta))?
            }
            Op::AdvanceTo(to_ms) => check_advance(&mut wheel, &mut model, to_ms)?,
            Op::AdvanceToNextDeadline => {
                if let Some(next_ms) = wheel.next_deadline_ms() {
                    check_advance(&mut wheel, &mut model, next_ms)?;
                }
            }
        }
        wheel.check_invariants();
        prop_assert_eq!(wheel.len(), model.len());
        let model_min_ms = model.values().min().copied();
        let next_ms = wheel.next_deadline_ms();
        prop_assert_eq!(next_ms.is_some(), model_min_ms.is_some());
        if let (Some(next_ms), Some(model_min_ms)) = (next_ms, model_min_ms) {
            prop_assert!(
                next_ms <= model_min_ms,
                "next {} > earliest {}",
                next_ms,
                model_min_ms
            );
            if model_min_ms > wheel.now_ms() {
                prop_assert!(
                    next_ms > wheel.now_ms(),
                    "next {} <= now {} with nothing due",
                    next_ms,
                    wheel.now_ms()
                );
            }
            if model_min_ms > wheel.now_ms() && level_for(wheel.now_ms(), model_min_ms) == 0 {
                // Level 0 holds the earliest timer: the answer is exact.
                prop_assert_eq!(next_ms, model_min_ms);
            }
        }
    }
    check_advance(&mut wheel, &mut model, u64::MAX)?;
    prop_assert!(wheel.is_empty());
    Ok(())
}

fn insert(
    wheel: &mut Wheel<u64>,
    model: &mut BTreeMap<u64, u64>,
    handles: &mut Vec<TimerHandle>,
    due_ms: u64,
) {
    let number = handles.len() as u64;
    handles.push(wheel.insert(due_ms, number));
    model.insert(number, due_ms);
}

fn check_advance(
    wheel: &mut Wheel<u64>,
    model: &mut BTreeMap<u64, u64>,
    to_ms: u64,
) -> Result<(), TestCaseError> {
    let mut fired = Vec::new();
    wheel.advance_into(to_ms, &mut fired);
    for (due_ms, number) in fired {
        prop_assert!(
            due_ms <= to_ms,
            "timer {} due {} fired at {}",
            number,
            due_ms,
            to_ms
        );
        let model_due_ms = model.remove(&number);
        prop_assert_eq!(
            model_due_ms,
            Some(due_ms),
            "timer {} fired twice or with a wrong due",
            number
        );
    }
    if let Some((number, due_ms)) = model.iter().find(|&(_, &due_ms)| due_ms <= to_ms) {
        prop_assert!(
            false,
            "timer {} due {} not fired by {}",
            number,
            due_ms,
            to_ms
        );
    }
    Ok(())
}
