//! The hierarchical timing wheel: the in-memory index of pending deadlines.
//!
//! The wheel is pure: it owns no files, threads or clock. Time is an absolute `u64` count of
//! milliseconds that the caller passes in, so tests and simulations drive it.
//!
//! # Layout
//!
//! Six levels of 64 slots, one millisecond per tick, as in tokio's timer and Kafka's purgatory:
//!
//! ```text
//! level  slot width    level span (64 slots)
//!   0    1 ms          64 ms
//!   1    64 ms         ~4.1 s
//!   2    ~4.1 s        ~4.4 min
//!   3    ~4.4 min      ~4.7 h
//!   4    ~4.7 h        ~12.4 days
//!   5    ~12.4 days    2^36 ms, ~2.18 years
//! ```
//!
//! An entry due after the wheel's time `now` goes to the level of the highest bit in which its
//! deadline differs from `now` (bits 6L..6L+5 select level L), into the slot named by the
//! deadline's bits at that level. Each level has a `u64` occupancy bitmap, so finding the
//! earliest non-empty slot is a `trailing_zeros`. Two more lists complete the picture: the
//! *ready* list holds entries inserted with a deadline at or before `now`, and the *overflow*
//! list holds entries 2^36 ms or more ahead (they differ from `now` above bit 35); overflow
//! entries are re-placed when the wheel reaches the 2^36 ms epoch of the earliest of them, so
//! no deadline is out of range.
//!
//! Entries live in a slab (`Vec`) and are chained into their list by `u32` links, so a timer
//! costs one slab entry and no allocation in steady state: freed entries are reused through a
//! free list. For `Wheel<u64>` an entry is 24 bytes ([`Wheel::ENTRY_BYTES`]) in two parallel
//! arrays: 16 bytes of payload (the deadline and a 16-bit generation share one `u64`, deadline
//! in the low 48 bits, then the value) and 8 bytes of links. Keeping the links apart makes a
//! list walk, which is a chain of dependent loads, read a dense array. Deadlines at or beyond
//! 2^48 - 1 ms (the year 10889 in Unix time) do not fit in 48 bits; they are kept exactly in
//! a side table, which is empty in practice.
//!
//! Each slot is four first-in first-out lists (*ways*); an entry joins the way numbered by its
//! slab index modulo 4. Expiring a slot walks its four lists one entry each in turn, so four
//! independent chains of loads are in flight instead of one: with a million timers the walk
//! is bound by cache misses, and this makes a large `advance` about twice as fast. The cost is
//! 12 KiB of list heads and tails per wheel.
//!
//! # Invariants
//!
//! Checked by `check_invariants` in the tests after every operation; the cheap ones are also
//! `debug_assert!`ed on the hot paths.
//!
//! - Occupancy bit `(L, S)` is set if and only if a list of level `L`, slot `S` is non-empty.
//! - An entry in way `W` of a slot has a slab index equal to `W` modulo 4.
//! - Every entry in level `L`, slot `S` has `due_ms > now`, its highest bit differing from
//!   `now` is in `6L..6L+6`, and its bits `6L..6L+6` equal `S`. Hence every occupied slot of a
//!   level comes strictly after the slot holding `now`, and every entry of a lower level is
//!   due before the start of any occupied slot of a higher level.
//! - Every entry of the ready list has `due_ms <= now`; every entry of the overflow list
//!   differs from `now` in a bit at or above 36 and has `due_ms > now`.
//! - `ready_due_min_ms` and `overflow_due_min_ms` are lower bounds of the deadlines in their
//!   (non-empty) list, and the overflow bound is above `now`.
//! - Links are consistent both ways; the head of a list has the list's marker as `prev`, the
//!   tail has it as `next`, and the list's `tails` entry names the tail.
//! - Live entries plus free entries make up the slab; a free entry has `prev == FREE`.
//!
//! # Handles
//!
//! A [`TimerHandle`] is a slab index and the entry's generation, which is bumped each time the
//! entry is freed, so a handle to a fired or cancelled timer is rejected. The generation has
//! 16 bits: a stale handle would be mistaken for a live one only if its entry had since been
//! reused a multiple of 65,536 times and is live again.

use std::collections::HashMap;
use std::mem::size_of;

/// Bits of the deadline consumed by one level: 64 slots per level.
const SLOT_BITS: u32 = 6;
/// Slots per level; one bit each in the level's occupancy bitmap.
const SLOTS_PER_LEVEL: usize = 1 << SLOT_BITS;
/// Number of levels.
const LEVELS: usize = 6;
/// Bits of the deadline covered by the whole wheel.
const WHEEL_SPAN_BITS: u32 = SLOT_BITS * LEVELS as u32;
/// How far ahead the levels reach: 2^36 ms, about 2.18 years. Later deadlines wait in the
/// overflow list and are placed when the wheel gets close enough.
pub const WHEEL_SPAN_MS: u64 = 1 << WHEEL_SPAN_BITS;
const _: () = assert!(SLOTS_PER_LEVEL == u64::BITS as usize);
const _: () = assert!(WHEEL_SPAN_BITS == 36);

/// Each slot is `WAYS` lists, an entry going to the one numbered by its slab index modulo
/// `WAYS`. An expiring slot walks its lists in turn: a list walk is a chain of dependent
/// loads, and independent chains let their cache misses overlap.
const WAYS: usize = 4;
/// Lists, by number: `LEVELS * 64` slots (level-major) of `WAYS` lists each, then the ready
/// and overflow lists.
const SLOT_LISTS: usize = LEVELS * SLOTS_PER_LEVEL * WAYS;
const READY_LIST: usize = SLOT_LISTS;
const OVERFLOW_LIST: usize = SLOT_LISTS + 1;
const LISTS: usize = SLOT_LISTS + 2;

/// An empty list (head and tail), or the end of the free list.
const NIL: u32 = u32::MAX;
/// `prev` of a free slab entry.
const FREE: u32 = u32::MAX - 1;
/// `prev` of the head and `next` of the tail of list `k` are `LIST_MARKER_BASE + k`, so
/// unlinking either end finds its list. Any link at or above this base is not an entry.
const LIST_MARKER_BASE: u32 = FREE - LISTS as u32;
/// The most timers one wheel holds; slab indices stay below the link markers.
pub const TIMERS_MAX: usize = 1 << 31;
const _: () = assert!(TIMERS_MAX as u64 <= LIST_MARKER_BASE as u64);

/// Low bits of `Timer::due_generation` holding the deadline.
const DUE_BITS: u32 = 48;
const DUE_MASK: u64 = (1 << DUE_BITS) - 1;
/// Stored instead of a deadline that does not fit in `DUE_BITS`; the deadline is in `far_due_ms`.
const DUE_FAR: u64 = DUE_MASK;
/// Bits of the generation, above the deadline.
const GENERATION_BITS: u32 = u64::BITS - DUE_BITS;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

/// The payload half of a slab entry: a pending timer, or a free entry waiting for reuse.
#[derive(Clone, Copy)]
struct Timer<T> {
    /// Deadline in the low `DUE_BITS` (or `DUE_FAR`), generation in the high bits.
    due_generation: u64,
    /// The caller's value; stale (but initialised) in a free entry.
    value: T,
}

/// The link half of a slab entry, kept in an array of its own: walking a list then reads 8
/// dense bytes per step, and the payload loads of successive entries overlap.
#[derive(Clone, Copy)]
struct Links {
    /// Previous entry in the list, the list's marker for the head, or `FREE`.
    prev: u32,
    /// Next entry in the list, the list's marker for the tail; in a free entry, the next free
    /// entry or `NIL`.
    next: u32,
}

impl<T> Timer<T> {
    #[inline]
    fn generation(&self) -> u32 {
        (self.due_generation >> DUE_BITS) as u32
    }
}

#[inline]
fn pack_due_generation(due_ms: u64, generation: u32) -> u64 {
    debug_assert!(
        generation <= GENERATION_MASK,
        "generation {generation} has too many bits"
    );
    (u64::from(generation) << DUE_BITS) | due_ms.min(DUE_FAR)
}

/// A slab entry of a `Wheel<u64>` is 24 bytes: deadline and generation, value, two links.
const _: () = assert!(size_of::<Timer<u64>>() + size_of::<Links>() == 24);

/// The level for an entry due at `due_ms > now_ms`: `LEVELS` or more means overflow.
#[inline]
fn level_for(now_ms: u64, due_ms: u64) -> usize {
    debug_assert!(
        due_ms > now_ms,
        "level_for: due_ms {due_ms} <= now_ms {now_ms}"
    );
    let highest_differing_bit = u64::BITS - 1 - (now_ms ^ due_ms).leading_zeros();
    (highest_differing_bit / SLOT_BITS) as usize
}

/// The slot of `due_ms` in `level`.
#[inline]
fn slot_for(due_ms: u64, level: usize) -> usize {
    ((due_ms >> (SLOT_BITS * level as u32)) as usize) & (SLOTS_PER_LEVEL - 1)
}

/// A stable reference to a timer in a [`Wheel`], returned by [`Wheel::insert`].
///
/// It stays valid until the timer fires or is cancelled; after that every operation given
/// it returns `None`, even once its slab entry holds another timer (see the module doc for the
/// one limit of the 16-bit generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerHandle {
    index: u32,
    generation: u16,
}

impl TimerHandle {
    /// The handle packed in a `u64`, for owners that store it in a plain integer field (the
    /// event index keeps one per scheduled event). Never equals `u64::MAX`.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// The handle packed by [`to_u64`](TimerHandle::to_u64); `None` for a value no handle
    /// packs to.
    pub fn from_u64(packed: u64) -> Option<TimerHandle> {
        if packed >> 48 != 0 {
            return None;
        }
        Some(TimerHandle {
            index: packed as u32,
            generation: (packed >> 32) as u16,
        })
    }
}

/// A hierarchical timing wheel of values `T`, each due at an absolute time in milliseconds.
///
/// Insert and cancel are O(1); [`advance`](Wheel::advance) yields each due entry in amortised
/// O(1) (an entry is moved down at most once per level it crosses).
///
/// ```
/// use afterlog::wheel::Wheel;
///
/// let mut wheel = Wheel::new(1_000);
/// let reminder = wheel.insert(1_500, "reminder");
/// let retry = wheel.insert(61_000, "retry");
/// assert!(wheel.next_deadline_ms() <= Some(1_500));
///
/// let mut fired = Vec::new();
/// wheel.advance(1_500, |due_ms, what| fired.push((due_ms, what)));
/// assert_eq!(fired, [(1_500, "reminder")]);
/// assert_eq!(wheel.cancel(reminder), None, "already fired");
/// assert_eq!(wheel.cancel(retry), Some("retry"));
/// assert!(wheel.is_empty());
/// ```
pub struct Wheel<T> {
    /// Slab of entries, live and free: payloads and links are parallel arrays of one length.
    timers: Vec<Timer<T>>,
    links: Vec<Links>,
    /// Deadlines that do not fit in `DUE_BITS`, by slab index.
    far_due_ms: HashMap<u32, u64>,
    /// Head of each list, or `NIL`.
    heads: Box<[u32; LISTS]>,
    /// Tail of each list, or `NIL`. Lists are first in, first out, so a list is walked in
    /// ascending slab order.
    tails: Box<[u32; LISTS]>,
    /// Per level, bit `S` set iff slot `S` of that level is non-empty.
    occupied: [u64; LEVELS],
    /// Head of the free list through `Links::next`, or `NIL`.
    free_head: u32,
    /// Live timers.
    len: usize,
    /// The wheel's current time: every entry due at or before it has been yielded, except
    /// those inserted into the ready list since.
    now_ms: u64,
    /// A lower bound of the deadlines in the ready list, when it is non-empty.
    ready_due_min_ms: u64,
    /// A lower bound of the deadlines in the overflow list, when it is non-empty.
    overflow_due_min_ms: u64,
}

impl<T> Wheel<T> {
    /// Bytes of memory per timer: one slab entry, payload plus links. 24 for `Wheel<u64>`.
    /// Beyond it a wheel has a fixed 12 KiB of list heads and tails, and a slab keeps the
    /// capacity of its largest size.
    pub const ENTRY_BYTES: usize = size_of::<Timer<T>>() + size_of::<Links>();
}

impl<T: Copy> Wheel<T> {
    /// An empty wheel whose current time is `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self::with_capacity(now_ms, 0)
    }

    /// An empty wheel whose current time is `now_ms`, with room for `capacity` timers before
    /// it allocates.
    pub fn with_capacity(now_ms: u64, capacity: usize) -> Self {
        Wheel {
            timers: Vec::with_capacity(capacity.min(TIMERS_MAX)),
            links: Vec::with_capacity(capacity.min(TIMERS_MAX)),
            far_due_ms: HashMap::new(),
            heads: Box::new([NIL; LISTS]),
            tails: Box::new([NIL; LISTS]),
            occupied: [0; LEVELS],
            free_head: NIL,
            len: 0,
            now_ms,
            ready_due_min_ms: u64::MAX,
            overflow_due_min_ms: u64::MAX,
        }
    }

    /// The wheel's current time: the latest `now_ms` given to [`advance`](Wheel::advance), or
    /// to [`new`](Wheel::new).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The number of pending timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a timer due at `due_ms` carrying `value`. O(1).
    ///
    /// A deadline at or before [`now_ms`](Wheel::now_ms) is yielded by the next
    /// [`advance`](Wheel::advance). Any `u64` deadline is accepted.
    ///
    /// # Panics
    ///
    /// If the wheel already holds [`TIMERS_MAX`] timers.
    #[inline]
    pub fn insert(&mut self, due_ms: u64, value: T) -> TimerHandle {
        let handle = self.allocate(due_ms, value);
        self.place(handle.index, due_ms);
        handle
    }

    /// Inserts every `(due_ms, value)` of `entries`, reserving room once, and returns their
    /// handles in the same order. Meant for rebuilding the wheel after a restart.
    ///
    /// # Panics
    ///
    /// If the wheel would hold more than [`TIMERS_MAX`] timers.
    pub fn extend<I>(&mut self, entries: I) -> Vec<TimerHandle>
    where
        I: IntoIterator<Item = (u64, T)>,
    {
        let entries = entries.into_iter();
        let (count_min, _) = entries.size_hint();
        let room = count_min.min(TIMERS_MAX - self.timers.len());
        self.timers.reserve(room);
        self.links.reserve(room);
        let mut handles = Vec::with_capacity(count_min);
        for (due_ms, value) in entries {
            handles.push(self.insert(due_ms, value));
        }
        handles
    }

    /// Removes a pending timer and returns its value; `None` if `handle` is stale (the timer
    /// fired or was cancelled already). O(1).
    #[inline]
    pub fn cancel(&mut self, handle: TimerHandle) -> Option<T> {
        let index = self.live_index(handle)?;
        self.unlink(index);
        Some(self.release(index).1)
    }

    /// The deadline of a pending timer; `None` if `handle` is stale.
    pub fn due_ms(&self, handle: TimerHandle) -> Option<u64> {
        self.live_index(handle)
            .map(|index| self.entry_due_ms(index))
    }

    /// When the wheel should next be advanced: never later than the earliest deadline, `None`
    /// if the wheel is empty. O(levels), from the bitmaps.
    ///
    /// It is exact when the earliest timer is due within the current 64 ms of level 0.
    /// Otherwise it is the start of the slot holding the earliest timer (or, for timers 2^36 ms
    /// or more ahead, a lower bound of them), which is later than
    /// [`now_ms`](Wheel::now_ms); advancing to it moves that slot's timers down a level,
    /// after which the answer is tighter. It is at or before `now_ms` only when a timer is
    /// already due, i.e. was inserted with a deadline in the past.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.heads[READY_LIST] != NIL {
            return Some(self.ready_due_min_ms);
        }
        if let Some((_, _, start_ms)) = self.earliest_slot() {
            return Some(start_ms);
        }
        if self.heads[OVERFLOW_LIST] != NIL {
            return Some(self.overflow_due_min_ms);
        }
        None
    }

    /// Moves the wheel's time to `now_ms` and calls `on_due(due_ms, value)` for every timer due
    /// at or before `now_ms`, removing it; a timer not yet due is never yielded.
    ///
    /// Timers come out slot by slot in deadline order: all timers of one slot are due before
    /// any timer of a later slot, but within a slot (up to 64^L ms wide at level L) their order
    /// is unspecified, even for timers with the same deadline. The ready list (timers inserted
    /// in the past) comes first and the overflow list last, each unordered like a slot. Empty
    /// ranges are skipped using the bitmaps, so one call can jump years.
    ///
    /// A `now_ms` earlier than [`now_ms`](Wheel::now_ms) does not move time back; it only
    /// yields timers inserted in the past that are due at or before it.
    ///
    /// If `on_due` panics, the wheel stays memory-safe, but the timer it was given is gone and
    /// the rest of the slot being expired may later come out late: drop the wheel and rebuild
    /// it (for example with [`extend`](Wheel::extend)) rather than carry on.
    pub fn advance(&mut self, now_ms: u64, mut on_due: impl FnMut(u64, T)) {
        if self.heads[READY_LIST] != NIL {
            self.expire_ready(now_ms, &mut on_due);
        }
        if now_ms <= self.now_ms {
            return;
        }
        loop {
            if let Some((level, slot, start_ms)) = self.earliest_slot() {
                if start_ms > now_ms {
                    // The earliest slot of the lowest level is the earliest slot of all.
                    break;
                }
                self.now_ms = start_ms;
                self.expire_slot(level, slot, now_ms, &mut on_due);
                continue;
            }
            if self.heads[OVERFLOW_LIST] == NIL {
                break;
            }
            let epoch_start_ms = self.overflow_due_min_ms & !(WHEEL_SPAN_MS - 1);
            if epoch_start_ms > now_ms {
                break;
            }
            debug_assert!(
                epoch_start_ms > self.now_ms,
                "overflow epoch {epoch_start_ms} not after now_ms {}",
                self.now_ms
            );
            // The levels are empty, so time may jump to the epoch of the earliest far timer.
            self.now_ms = epoch_start_ms;
            self.overflow_due_min_ms = u64::MAX;
            self.expire_overflow(now_ms, &mut on_due);
        }
        self.now_ms = now_ms;
    }

    /// [`advance`](Wheel::advance), appending each due timer to `out` as `(due_ms, value)`.
    pub fn advance_into(&mut self, now_ms: u64, out: &mut Vec<(u64, T)>) {
        self.advance(now_ms, |due_ms, value| out.push((due_ms, value)));
    }

    /// The earliest non-empty slot as `(level, slot, start_ms)`, if any level is non-empty.
    #[inline]
    fn earliest_slot(&self) -> Option<(usize, usize, u64)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        let slot = self.occupied[level].trailing_zeros() as usize;
        let shift = SLOT_BITS * level as u32;
        let level_span_ms = 1u64 << (shift + SLOT_BITS);
        debug_assert!(
            slot > slot_for(self.now_ms, level),
            "level {level}: occupied slot {slot} not after the slot of now_ms {}",
            self.now_ms
        );
        let start_ms = (self.now_ms & !(level_span_ms - 1)) + ((slot as u64) << shift);
        Some((level, slot, start_ms))
    }

    /// The slab index of the live timer `handle` refers to.
    #[inline]
    fn live_index(&self, handle: TimerHandle) -> Option<u32> {
        let timer = self.timers.get(handle.index as usize)?;
        let live = self.links[handle.index as usize].prev != FREE
            && timer.generation() == u32::from(handle.generation);
        live.then_some(handle.index)
    }

    /// The deadline of the live entry at `index`.
    #[inline]
    fn entry_due_ms(&self, index: u32) -> u64 {
        let due_ms = self.timers[index as usize].due_generation & DUE_MASK;
        if due_ms == DUE_FAR {
            let far_due_ms = self.far_due_ms.get(&index).copied();
            debug_assert!(far_due_ms.is_some(), "entry {index} has no far deadline");
            far_due_ms.unwrap_or(DUE_FAR)
        } else {
            due_ms
        }
    }

    /// Takes a slab entry (a free one if any) for a new timer; it is not in any list yet.
    #[inline]
    fn allocate(&mut self, due_ms: u64, value: T) -> TimerHandle {
        let (index, generation) = if self.free_head != NIL {
            let index = self.free_head;
            let links = self.links[index as usize];
            debug_assert!(
                links.prev == FREE,
                "free list entry {index} has prev {}",
                links.prev
            );
            self.free_head = links.next;
            let timer = &mut self.timers[index as usize];
            let generation = timer.generation();
            timer.due_generation = pack_due_generation(due_ms, generation);
            timer.value = value;
            (index, generation)
        } else {
            let index = self.timers.len();
            assert!(index < TIMERS_MAX, "the wheel is full: {index} timers");
            self.timers.push(Timer {
                due_generation: pack_due_generation(due_ms, 0),
                value,
            });
            self.links.push(Links {
                prev: NIL,
                next: NIL,
            });
            (index as u32, 0)
        };
        if due_ms >= DUE_FAR {
            self.far_due_ms.insert(index, due_ms);
        }
        self.len += 1;
        TimerHandle {
            index,
            generation: generation as u16,
        }
    }

    /// Returns an unlinked entry to the free list, bumping its generation; yields its deadline
    /// and value.
    #[inline]
    fn release(&mut self, index: u32) -> (u64, T) {
        let due_ms = self.entry_due_ms(index);
        if due_ms >= DUE_FAR {
            self.far_due_ms.remove(&index);
        }
        let timer = &mut self.timers[index as usize];
        let generation = (timer.generation() + 1) & GENERATION_MASK;
        timer.due_generation = pack_due_generation(0, generation);
        let value = timer.value;
        self.links[index as usize] = Links {
            prev: FREE,
            next: self.free_head,
        };
        self.free_head = index;
        self.len -= 1;
        (due_ms, value)
    }

    /// Links the entry at `index` into the list its deadline belongs to, relative to `now_ms`.
    #[inline]
    fn place(&mut self, index: u32, due_ms: u64) {
        let list = if due_ms <= self.now_ms {
            self.ready_due_min_ms = if self.heads[READY_LIST] == NIL {
                due_ms
            } else {
                self.ready_due_min_ms.min(due_ms)
            };
            READY_LIST
        } else {
            let level = level_for(self.now_ms, due_ms);
            if level >= LEVELS {
                self.overflow_due_min_ms = if self.heads[OVERFLOW_LIST] == NIL {
                    due_ms
                } else {
                    self.overflow_due_min_ms.min(due_ms)
                };
                OVERFLOW_LIST
            } else {
                let slot = slot_for(due_ms, level);
                debug_assert!(
                    slot > slot_for(self.now_ms, level),
                    "due_ms {due_ms} in level {level} slot {slot}, not after now_ms {}",
                    self.now_ms
                );
                self.occupied[level] |= 1 << slot;
                (level * SLOTS_PER_LEVEL + slot) * WAYS + (index as usize & (WAYS - 1))
            }
        };
        self.push_back(list, index);
    }

    #[inline]
    fn push_back(&mut self, list: usize, index: u32) {
        let marker = LIST_MARKER_BASE + list as u32;
        let old_tail = self.tails[list];
        let links = &mut self.links[index as usize];
        links.next = marker;
        if old_tail == NIL {
            links.prev = marker;
            self.heads[list] = index;
        } else {
            links.prev = old_tail;
            self.links[old_tail as usize].next = index;
        }
        self.tails[list] = index;
    }

    /// Unlinks the live entry at `index` from its list, clearing the slot's occupancy bit when
    /// the list becomes empty.
    #[inline]
    fn unlink(&mut self, index: u32) {
        let Links { prev, next } = self.links[index as usize];
        debug_assert!(prev != FREE, "unlinking free entry {index}");
        let (is_head, is_tail) = (prev >= LIST_MARKER_BASE, next >= LIST_MARKER_BASE);
        if is_head {
            let list = (prev - LIST_MARKER_BASE) as usize;
            self.heads[list] = if is_tail { NIL } else { next };
        } else {
            self.links[prev as usize].next = next;
        }
        if is_tail {
            let list = (next - LIST_MARKER_BASE) as usize;
            self.tails[list] = if is_head { NIL } else { prev };
            if is_head && list < SLOT_LISTS {
                let first = list & !(WAYS - 1);
                if self.heads[first..first + WAYS]
                    .iter()
                    .all(|&head| head == NIL)
                {
                    let slot_number = list / WAYS;
                    let (level, slot) =
                        (slot_number / SLOTS_PER_LEVEL, slot_number % SLOTS_PER_LEVEL);
                    self.occupied[level] &= !(1 << slot);
                }
            }
        } else {
            self.links[next as usize].prev = prev;
        }
    }

    /// Yields the ready entries due at or before `now_ms`; the others stay.
    fn expire_ready(&mut self, now_ms: u64, on_due: &mut impl FnMut(u64, T)) {
        let mut index = self.heads[READY_LIST];
        // The bound is raised to the earliest timer left: after a partial expiry (the time
        // given is before the wheel's, as after a backward step of the wall clock) a bound
        // left at an expired timer's deadline would name a deadline already past, and a
        // caller sleeping until `next_deadline_ms` would never sleep.
        let mut left_min_ms = u64::MAX;
        while index < LIST_MARKER_BASE {
            let next = self.links[index as usize].next;
            let due_ms = self.entry_due_ms(index);
            if due_ms <= now_ms {
                self.unlink(index);
                let (due_ms, value) = self.release(index);
                on_due(due_ms, value);
            } else {
                left_min_ms = left_min_ms.min(due_ms);
            }
            index = next;
        }
        self.ready_due_min_ms = left_min_ms;
    }

    /// Empties a slot that the wheel's time has just reached: yields the entries due at or
    /// before `now_ms` and places the others afresh, which moves them to a lower level. The
    /// slot's lists are walked one entry each in turn.
    fn expire_slot(
        &mut self,
        level: usize,
        slot: usize,
        now_ms: u64,
        on_due: &mut impl FnMut(u64, T),
    ) {
        let first = (level * SLOTS_PER_LEVEL + slot) * WAYS;
        let mut cursors = [NIL; WAYS];
        cursors.copy_from_slice(&self.heads[first..first + WAYS]);
        // An empty list's head is NIL, which is past every entry like a list marker.
        let mut walking = true;
        while walking {
            walking = false;
            for cursor in &mut cursors {
                let index = *cursor;
                if index < LIST_MARKER_BASE {
                    walking = true;
                    *cursor = self.links[index as usize].next;
                    let due_ms = self.entry_due_ms(index);
                    self.unlink(index);
                    if due_ms <= now_ms {
                        let (due_ms, value) = self.release(index);
                        on_due(due_ms, value);
                    } else {
                        self.place(index, due_ms);
                    }
                }
            }
        }
    }

    /// Empties the overflow list once the wheel's time has reached the 2^36 ms epoch of its
    /// earliest entry: yields the entries due at or before `now_ms`, places those now within
    /// reach of the levels, and leaves the others, recomputing their lower bound.
    fn expire_overflow(&mut self, now_ms: u64, on_due: &mut impl FnMut(u64, T)) {
        let mut index = self.heads[OVERFLOW_LIST];
        while index < LIST_MARKER_BASE {
            let next = self.links[index as usize].next;
            let due_ms = self.entry_due_ms(index);
            if due_ms <= now_ms {
                self.unlink(index);
                let (due_ms, value) = self.release(index);
                on_due(due_ms, value);
            } else if level_for(self.now_ms, due_ms) >= LEVELS {
                self.overflow_due_min_ms = self.overflow_due_min_ms.min(due_ms);
            } else {
                self.unlink(index);
                self.place(index, due_ms);
            }
            index = next;
        }
    }
}

impl<T: Copy> std::fmt::Debug for Wheel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wheel")
            .field("now_ms", &self.now_ms)
            .field("len", &self.len)
            .field("next_deadline_ms", &self.next_deadline_ms())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
