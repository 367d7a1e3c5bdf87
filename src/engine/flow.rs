//! Flow control and priorities: the due events of each name, waiting in a queue until the
//! name may start another attempt. Part of the core (pure: time comes in as `now_ms`).
//!
//! An event taken out of the wheel joins its name's queue, ordered by priority (higher
//! first), then due time, then id. A name is *eligible* while it has queued events, is not
//! paused, runs fewer attempts than its concurrency limit and has a token of its rate limit;
//! [`Flow::dispatch`] takes the best head among the eligible names, one event at a time, so
//! priorities order events across names too. A rate-limited name without a token waits until
//! its next token ([`Flow::next_deadline_ms`]); a name at its concurrency limit waits for one
//! of its attempts to finish ([`Flow::finish`] says when that frees a slot).
//!
//! The rate limit is a token bucket of `n` tokens refilled at one per `per / n`, kept as the
//! generic cell rate algorithm: one number per name (the theoretical arrival time), exact in
//! integers. A full bucket lets a burst of `n` start at once; after it, starts follow at the
//! refill rate, so over any time `t` at most `n + n × t / per` start.
//!
//! Queue entries are removed lazily: an event cancelled (or claimed) while queued leaves a
//! stale entry that `dispatch` skips; `live` counts the others. A claimed event put back
//! (after a restatement) is queued again under the same id, so its stale entry looks live
//! until it is handed out: the two entries have one key, so the second is the head right
//! after the first is taken, and is dropped then; the retention scan takes each id once.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

/// Limits of one name, from [`Options`](crate::Options).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most attempts of the name at once.
    pub concurrency: Option<u32>,
    /// Most attempts started per period: (`n`, period in ms).
    pub rate: Option<(u32, i64)>,
}

/// What the flow needs of the engine's options.
#[derive(Clone, Debug, Default)]
pub(crate) struct FlowConfig {
    pub limits: HashMap<String, Limits>,
    /// `Options::retention` in ms: queued events this long past their due time are handed
    /// out whatever their name's state, so delivery expires them.
    pub retention_ms: i64,
    /// Most events in flight before dispatch waits for some to finish, so that priorities
    /// order a backlog (0: no bound).
    pub in_flight_cap: usize,
}

/// The order of queued events, least first: priority (higher first), due time, id.
type HeadKey = (Reverse<i8>, i64, u64);

/// A queued event: the heap's greatest is the next to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Queued {
    pub priority: i8,
    pub due_ms: i64,
    pub id: u64,
}

impl Queued {
    fn key(&self) -> HeadKey {
        (Reverse(self.priority), self.due_ms, self.id)
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A name's queue: one heap per priority, highest first. Events join a queue as they fall
/// due, so each heap mostly receives them in its own order and stays nearly sorted, and a
/// pop walks the same few cache lines every time; one heap of mixed priorities would walk a
/// new path from root to leaf (a cache miss a level) at every pop.
#[derive(Default)]
struct Queue {
    /// Non-empty heaps, by priority, highest first.
    levels: Vec<(i8, BinaryHeap<Queued>)>,
}

impl Queue {
    fn push(&mut self, q: Queued) {
        match self.levels.binary_search_by(|(p, _)| q.priority.cmp(p)) {
            Ok(i) => self.levels[i].1.push(q),
            Err(i) => self
                .levels
                .insert(i, (q.priority, BinaryHeap::from(vec![q]))),
        }
    }

    fn peek(&self) -> Option<&Queued> {
        self.levels.first().and_then(|(_, h)| h.peek())
    }

    fn pop(&mut self) -> Option<Queued> {
        let (_, heap) = self.levels.first_mut()?;
        let q = heap.pop();
        if heap.is_empty() {
            self.levels.remove(0);
        }
        q
    }

    fn retain(&mut self, mut keep: impl FnMut(&Queued) -> bool) {
        for (_, heap) in &mut self.levels {
            heap.retain(&mut keep);
        }
        self.levels.retain(|(_, h)| !h.is_empty());
    }

    fn clear(&mut self) {
        self.levels.clear();
    }
}

/// Where a name is listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listed {
    No,
    Eligible(HeadKey),
    /// Waiting for a token, until this time.
    RateBlocked(i64),
}

struct NameFlow {
    queue: Queue,
    /// Entries of `queue` that are not stale.
    live: u64,
    limits: Limits,
    running: u32,
    /// The rate limit's theoretical arrival time, in ms × n (`None`: a full bucket).
    tat: Option<i128>,
    paused: bool,
    listed: Listed,
}

/// The due queues and flow state of every name. See the module documentation.
#[derive(Default)]
pub(crate) struct Flow {
    config: FlowConfig,
    slots: Vec<NameFlow>,
    by_name: HashMap<Arc<str>, u32>,
    eligible: BTreeSet<(HeadKey, u32)>,
    rate_blocked: BTreeSet<(i64, u32)>,
    /// Live queued events of every name.
    queued: u64,
    /// Events handed out and not finished.
    in_flight: usize,
    /// When queues are next scanned for events past retention.
    next_scan_ms: i64,
}

/// How often queues are scanned for events past retention: a 64th of it, within 10 ms..60 s.
fn scan_interval_ms(retention_ms: i64) -> i64 {
    (retention_ms / 64).clamp(10, 60_000)
}

impl Flow {
    pub fn new(config: FlowConfig) -> Flow {
        Flow {
            config,
            ..Flow::default()
        }
    }

    /// The slot of `name`, made on first use.
    pub fn slot(&mut self, name: &str) -> u32 {
        if let Some(&slot) = self.by_name.get(name) {
            return slot;
        }
        let name: Arc<str> = name.into();
        let slot = self.slots.len() as u32;
        self.slots.push(NameFlow {
            queue: Queue::default(),
            live: 0,
            limits: self.config.limits.get(&*name).copied().unwrap_or_default(),
            running: 0,
            tat: None,
            paused: false,
            listed: Listed::No,
        });
        self.by_name.insert(name, slot);
        slot
    }

    /// Queues a due event of the name at `slot`.
    pub fn push(&mut self, slot: u32, queued: Queued, now_ms: i64) {
        let n = &mut self.slots[slot as usize];
        n.queue.push(queued);
        n.live += 1;
        self.queued += 1;
        // Only a new head changes the listing.
        let head = n.queue.peek().is_some_and(|h| h.id == queued.id);
        if head || n.listed == Listed::No {
            self.relist(slot, now_ms);
        }
    }

    /// A queued event of the name at `slot` left its queue otherwise (cancelled, claimed):
    /// its entry is stale.
    pub fn unqueued(&mut self, slot: u32) {
        let n = &mut self.slots[slot as usize];
        n.live = n.live.saturating_sub(1);
        self.queued = self.queued.saturating_sub(1);
    }

    /// Pauses or resumes `name`. True if the name became eligible (dispatch has work).
    pub fn set_paused(&mut self, name: &str, paused: bool, now_ms: i64) -> bool {
        let slot = self.slot(name);
        self.slots[slot as usize].paused = paused;
        self.relist(slot, now_ms);
        matches!(self.slots[slot as usize].listed, Listed::Eligible(_))
    }

    /// An event handed out by [`dispatch`](Flow::dispatch) is done. True if that makes its
    /// name eligible again (it was at its concurrency limit), or frees room under the cap
    /// for a backlog: dispatch has work.
    pub fn finish(&mut self, slot: u32, now_ms: i64) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        let n = &mut self.slots[slot as usize];
        n.running = n.running.saturating_sub(1);
        let mut wake = false;
        if n.live > 0 && n.listed == Listed::No {
            self.relist(slot, now_ms);
            wake = matches!(self.slots[slot as usize].listed, Listed::Eligible(_));
        }
        let cap = self.config.in_flight_cap;
        // Woken at half the cap, not at every finish, while a backlog waits.
        wake || (cap > 0 && self.in_flight == cap / 2 && !self.eligible.is_empty())
    }

    /// Hands out up to `max` events, best first among the eligible names (and every queued
    /// event past retention, whatever its name's state), appending their ids and slots to
    /// `out`. `live(id)` tells whether a queue entry is still queued.
    pub fn dispatch(
        &mut self,
        now_ms: i64,
        max: usize,
        live: &mut dyn FnMut(u64) -> bool,
        out: &mut Vec<(u64, u32)>,
    ) {
        self.scan_retention(now_ms, live, out);
        while let Some(&(at, slot)) = self.rate_blocked.first() {
            if at > now_ms {
                break;
            }
            self.rate_blocked.pop_first();
            self.slots[slot as usize].listed = Listed::No;
            self.relist(slot, now_ms);
        }
        let cap = self.config.in_flight_cap;
        let room = |in_flight: usize| cap == 0 || in_flight < cap;
        let mut taken = 0;
        while taken < max && room(self.in_flight) {
            let Some((key, slot)) = self.eligible.pop_first() else {
                break;
            };
            let n = &mut self.slots[slot as usize];
            n.listed = Listed::No;
            // Stale heads (cancelled while queued) go first.
            while n.queue.peek().is_some_and(|q| !live(q.id)) {
                n.queue.pop();
            }
            match n.queue.peek() {
                // The name was listed by a stale head: list it by its live one, and look again.
                Some(head) if head.key() != key => {}
                Some(_) => {
                    let q = n.queue.pop().expect("peeked");
                    // A second entry of the id (queued again) is stale now.
                    while n.queue.peek().is_some_and(|h| h.id == q.id) {
                        n.queue.pop();
                    }
                    self.take(slot, now_ms);
                    out.push((q.id, slot));
                    taken += 1;
                }
                None => {}
            }
            self.relist(slot, now_ms);
        }
    }

    /// Counts an event of `slot` handed out.
    fn take(&mut self, slot: u32, now_ms: i64) {
        let n = &mut self.slots[slot as usize];
        n.live = n.live.saturating_sub(1);
        n.running += 1;
        if let Some((rate, per_ms)) = n.limits.rate {
            let (t, now) = (i128::from(per_ms), i128::from(now_ms) * i128::from(rate));
            n.tat = Some(n.tat.unwrap_or(now).max(now) + t);
        }
        self.queued = self.queued.saturating_sub(1);
        self.in_flight += 1;
    }

    /// Every `scan_interval_ms`, hands out the queued events whose due time is more than the
    /// retention ago, whatever their name's state: delivery expires them (their first due
    /// time is no later than their due time, so they are past retention by the one rule).
    fn scan_retention(
        &mut self,
        now_ms: i64,
        live: &mut dyn FnMut(u64) -> bool,
        out: &mut Vec<(u64, u32)>,
    ) {
        if now_ms < self.next_scan_ms || self.queued == 0 {
            return;
        }
        self.next_scan_ms = now_ms.saturating_add(scan_interval_ms(self.config.retention_ms));
        let retention = self.config.retention_ms;
        for slot in 0..self.slots.len() as u32 {
            let n = &mut self.slots[slot as usize];
            if n.live == 0 {
                continue;
            }
            let mut expired = Vec::new();
            n.queue.retain(|q| {
                let past = now_ms > q.due_ms.saturating_add(retention);
                if past && live(q.id) {
                    expired.push(q.id);
                }
                !past
            });
            // An id queued twice is past retention twice; it is handed out once.
            expired.sort_unstable();
            expired.dedup();
            for id in expired {
                self.take(slot, now_ms);
                out.push((id, slot));
            }
            self.relist(slot, now_ms);
        }
    }

    /// Lists the name at `slot` where its state puts it.
    fn relist(&mut self, slot: u32, now_ms: i64) {
        let n = &mut self.slots[slot as usize];
        match n.listed {
            Listed::No => {}
            Listed::Eligible(key) => {
                self.eligible.remove(&(key, slot));
            }
            Listed::RateBlocked(at) => {
                self.rate_blocked.remove(&(at, slot));
            }
        }
        n.listed = Listed::No;
        if n.live == 0 || n.paused || n.limits.concurrency.is_some_and(|c| n.running >= c) {
            if n.live == 0 {
                // Only stale entries: drop them.
                n.queue.clear();
            }
            return;
        }
        if let (Some((rate, per_ms)), Some(tat)) = (n.limits.rate, n.tat) {
            // Allowed when tat - (per × n - per) <= now × n (a token is left).
            let (n_i, per) = (i128::from(rate), i128::from(per_ms));
            let allowed_scaled = tat - (per * n_i - per);
            if allowed_scaled > i128::from(now_ms) * n_i {
                let at = allowed_scaled.div_euclid(n_i) + i128::from(allowed_scaled % n_i != 0);
                let at = at.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
                n.listed = Listed::RateBlocked(at);
                self.rate_blocked.insert((at, slot));
                return;
            }
        }
        let Some(head) = n.queue.peek() else {
            return;
        };
        let key = head.key();
        n.listed = Listed::Eligible(key);
        self.eligible.insert((key, slot));
    }

    /// The earliest time dispatch may find new work without a record being applied: a rate
    /// limit's next token, or the next retention scan.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        let token = self.rate_blocked.first().map(|&(at, _)| at);
        let scan = (self.queued > 0).then_some(self.next_scan_ms);
        token.into_iter().chain(scan).min()
    }

    /// Whether queued events will be handed out without a record being applied (not only
    /// paused names' events): for `wait_idle`.
    pub fn has_runnable(&self) -> bool {
        !self.eligible.is_empty() || !self.rate_blocked.is_empty()
    }

    /// Live queued events of every name.
    pub fn queued(&self) -> u64 {
        self.queued
    }
}

#[cfg(test)]
mod tests {
    //! The flow against a model: random pushes (priorities, due times), dispatches,
    //! finishes, cancels of queued events, queued events claimed and queued again, pauses
    //! and clock steps on three names with
    //! different limits. After each dispatch: every event handed out was queued and live,
    //! never twice; no name runs more than its concurrency limit; a paused name hands out
    //! nothing; a rate-limited name starts no more than its bucket allows; nothing better
    //! (by priority, then due time, then id) stays queued on a name that could run; and
    //! nothing runnable is left behind.

    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const NAMES: [&str; 3] = ["free", "one", "rated"];
    const RATE: (u32, i64) = (3, 100);

    fn config() -> FlowConfig {
        let mut limits = HashMap::new();
        limits.insert(
            "one".to_string(),
            Limits {
                concurrency: Some(1),
                rate: None,
            },
        );
        limits.insert(
            "rated".to_string(),
            Limits {
                concurrency: Some(2),
                rate: Some(RATE),
            },
        );
        FlowConfig {
            limits,
            retention_ms: i64::MAX / 4,
            in_flight_cap: 0,
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push {
            name: usize,
            priority: i8,
            due: i64,
        },
        Dispatch {
            max: usize,
        },
        Finish {
            pick: usize,
        },
        Cancel {
            pick: usize,
        },
        /// Claimed out of its queue and put back: queued again under its id.
        Requeue {
            pick: usize,
        },
        Pause {
            name: usize,
            paused: bool,
        },
        Advance {
            ms: i64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, -2i8..3, 0i64..50).prop_map(|(name, priority, due)| Op::Push { name, priority, due }),
            3 => (1..6usize).prop_map(|max| Op::Dispatch { max }),
            3 => any::<usize>().prop_map(|pick| Op::Finish { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Requeue { pick }),
            1 => (0..3usize, any::<bool>()).prop_map(|(name, paused)| Op::Pause { name, paused }),
            2 => (0i64..80).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    /// An event claimed out of a paused name's queue and put back is queued twice under its
    /// id; once past retention it is handed out (to expire) once.
    #[test]
    fn a_requeued_event_past_retention_is_handed_out_once() {
        let mut flow = Flow::new(FlowConfig {
            retention_ms: 100,
            ..FlowConfig::default()
        });
        let slot = flow.slot("a");
        flow.set_paused("a", true, 0);
        let q = Queued {
            priority: 0,
            due_ms: 0,
            id: 1,
        };
        flow.push(slot, q, 0);
        flow.unqueued(slot);
        flow.push(slot, q, 0);
        assert_eq!(flow.queued(), 1);
        let mut out = Vec::new();
        flow.dispatch(1_000, usize::MAX, &mut |_| true, &mut out);
        assert_eq!(out, vec![(1, slot)]);
        assert_eq!(flow.queued(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn flow_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut flow = Flow::new(config());
            let slots: Vec<u32> = NAMES.iter().map(|n| flow.slot(n)).collect();
            // Model: queued (live) events per name, running per name, paused names, starts.
            let mut queued: BTreeMap<u64, (usize, Queued)> = BTreeMap::new();
            let mut running: BTreeMap<u64, usize> = BTreeMap::new();
            let mut paused = [false; 3];
            let mut starts: Vec<i64> = Vec::new();
            let mut handed = BTreeSet::new();
            let (mut now, mut next_id) = (0i64, 1u64);
            for op in &ops {
                match *op {
                    Op::Push { name, priority, due } => {
                        let q = Queued { priority, due_ms: now + due, id: next_id };
                        next_id += 1;
                        queued.insert(q.id, (name, q));
                        flow.push(slots[name], q, now);
                    }
                    Op::Cancel { pick } => {
                        let Some(&id) = queued.keys().nth(pick % queued.len().max(1)) else { continue };
                        let (name, _) = queued.remove(&id).unwrap();
                        flow.unqueued(slots[name]);
                    }
                    Op::Requeue { pick } => {
                        let Some(&id) = queued.keys().nth(pick % queued.len().max(1)) else { continue };
                        let (name, q) = queued[&id];
                        flow.unqueued(slots[name]);
                        flow.push(slots[name], q, now);
                    }
                    Op::Finish { pick } => {
                        let Some(&id) = running.keys().nth(pick % running.len().max(1)) else { continue };
                        let name = running.remove(&id).unwrap();
                        flow.finish(slots[name], now);
                    }
                    Op::Pause { name, paused: p } => {
                        paused[name] = p;
                        flow.set_paused(NAMES[name], p, now);
                    }
                    Op::Advance { ms } => now += ms,
                    Op::Dispatch { max } => {
                        let mut out = Vec::new();
                        let q2 = queued.clone();
                        let mut live = |id: u64| q2.contains_key(&id);
                        flow.dispatch(now, max, &mut live, &mut out);
                        prop_assert!(out.len() <= max);
                        for &(id, slot) in &out {
                            let (name, q) = queued.remove(&id).expect("handed out a live queued event");
                            prop_assert!(handed.insert(id), "{} handed out twice", id);
                            prop_assert_eq!(slot, slots[name]);
                            prop_assert!(!paused[name], "paused {} handed out {}", NAMES[name], id);
                            // Nothing better stayed queued on a name free to run (no rate limit).
                            for (&other, &(oname, oq)) in &queued {
                                let free = !paused[oname] && oname == 0;
                                prop_assert!(!free || oq.key() >= q.key() || out.iter().any(|o| o.0 == other),
                                    "{:?} handed out before {:?}", q, oq);
                            }
                            running.insert(id, name);
                            if name == 2 {
                                starts.push(now);
                            }
                        }
                        let runs = |n: usize| running.values().filter(|&&r| r == n).count();
                        prop_assert!(runs(1) <= 1, "concurrency 1 exceeded");
                        prop_assert!(runs(2) <= 2, "concurrency 2 exceeded");
                        if out.len() < max {
                            // Nothing runnable left: the free name is drained unless paused,
                            // the limited one is at its limit, paused or drained.
                            let left = |n: usize| queued.values().filter(|(m, _)| *m == n).count();
                            prop_assert!(paused[0] || left(0) == 0, "free name left behind");
                            prop_assert!(paused[1] || runs(1) == 1 || left(1) == 0, "limited name left behind");
                            if !paused[2] && runs(2) < 2 && left(2) > 0 {
                                prop_assert!(flow.next_deadline_ms().is_some_and(|d| d > now),
                                    "a rate-blocked name needs a deadline");
                            }
                        }
                    }
                }
                // The token bucket: over any span from a start, at most n + n × span / per.
                let (n, per) = (i64::from(RATE.0), RATE.1);
                for (i, &from) in starts.iter().enumerate() {
                    let later = starts[i..].iter().filter(|&&t| t <= now).count() as i64;
                    prop_assert!(later <= n + n * (now - from) / per, "{} starts since {}", later, from);
                }
                prop_assert_eq!(flow.queued(), queued.len() as u64);
            }
        }
    }
}
