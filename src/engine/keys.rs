//! Keys, priorities and pause: `publish_with`, `pause`, `resume`.
//!
//! A key is per event name. Publishes of one key are serialized (`KeyLocks`): each decides
//! against the index as the previous one left it, after that one's record was applied — so
//! 32 threads publishing one key with `KeyMode::Keep` write exactly one event. Publishes of
//! different keys do not wait for each other.
//!
//! What a holder is, for each mode (a holder is the pending event that took the key):
//! - `Keep`: any pending holder, running or not, keeps the key (`Kept`); with a window, a
//!   holder keeps it until the window passes, even finished.
//! - `Replace`: the holder is cancelled and the new event written in one record
//!   (`Replaced(holder)`). A holder whose attempt runs is cancelled as `cancel` does: the
//!   attempt goes on, and a failure of it is not retried.
//! - `ReplaceBody`: a holder waiting for its due time (in the wheel, or due and queued) gets
//!   the new body and keeps its id, due time, priority and publish time (`Updated`). A
//!   holder already handed to delivery has read its body: the publish then acts as
//!   `Replace`.

use super::Inner;
use crate::after::After;
use crate::error::{Error, Result};
use crate::format::{
    EventOptions, KEY_KEEP, KEY_NONE, KEY_REPLACE, KEY_REPLACE_BODY, Pause, Publish, PublishEntry,
    Record, validate_key, validate_name,
};
use crate::ids::EventId;
use crate::index::{Applied, EventState, Location};
use crate::sync::{Condvar, Mutex};
use std::time::Duration;

/// What a publish does when its key is taken (see [`PublishOptions::key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyMode {
    /// Dedup: a pending event holds the key, so nothing is written and its id returned.
    Keep,
    /// Debounce: the holder is cancelled and the new event written, in one record (the due
    /// time moves to the new event's).
    Replace,
    /// The holder's body is replaced; its due time, id and priority are kept.
    ReplaceBody,
}

impl KeyMode {
    fn code(self) -> u8 {
        match self {
            KeyMode::Keep => KEY_KEEP,
            KeyMode::Replace => KEY_REPLACE,
            KeyMode::ReplaceBody => KEY_REPLACE_BODY,
        }
    }
}

/// What [`Engine::publish_with`](crate::Engine::publish_with) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyOutcome {
    /// No event held the key (or no key was given): the event was written.
    New,
    /// `Keep`: an event holds the key; nothing was written, and the id is that event's.
    Kept,
    /// `Replace`: this pending event was cancelled and the new one written, in one record.
    Replaced(EventId),
    /// `ReplaceBody`: the pending event's body was replaced, its due time kept; the id is
    /// that event's.
    Updated,
}

/// The result of [`Engine::publish_with`](crate::Engine::publish_with).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Published {
    /// The event written, or the one that holds the key (`Kept`, `Updated`).
    pub id: EventId,
    /// What happened.
    pub outcome: KeyOutcome,
}

/// Options of [`Engine::publish_with`](crate::Engine::publish_with): a key and a priority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    key: Option<(Vec<u8>, KeyMode)>,
    window: Option<Duration>,
    priority: i8,
}

impl PublishOptions {
    /// A key (1 to 255 bytes, per event name) and what to do when a pending event holds it.
    /// The event holds the key from its publish until it is acknowledged, cancelled or
    /// dropped.
    pub fn key(mut self, key: impl AsRef<[u8]>, mode: KeyMode) -> PublishOptions {
        self.key = Some((key.as_ref().to_vec(), mode));
        self
    }

    /// `KeyMode::Keep` only: the key stays taken this long after the publish, even once the
    /// event finished (an idempotency window). Compaction keeps the event's records until
    /// the window passes, so a restart keeps the key taken too.
    pub fn key_window(mut self, window: Duration) -> PublishOptions {
        self.window = Some(window);
        self
    }

    /// Higher first among due events (default 0). Equal priorities keep due order.
    pub fn priority(mut self, priority: i8) -> PublishOptions {
        self.priority = priority;
        self
    }
}

/// Shards of [`KeyLocks`]: publishers of different keys rarely meet on one lock.
const KEY_LOCK_SHARDS: usize = 64;

/// The keys being published: one publish per key at a time. A key is known by a 64-bit
/// hash of its name and bytes; two keys with one hash take turns, which costs a wait and
/// is never wrong.
pub(crate) struct KeyLocks {
    shards: Box<[KeyShard]>,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Default)]
struct KeyShard {
    /// Hashes of the keys whose publish runs (a few: publishers spread over the shards),
    /// and how many publishers wait in this shard.
    held: Mutex<(Vec<u64>, usize)>,
    freed: Condvar,
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks {
            shards: (0..KEY_LOCK_SHARDS).map(|_| KeyShard::default()).collect(),
            hasher: Default::default(),
        }
    }
}

/// A key's turn; the next publisher of the key goes on when it is dropped.
struct KeyTurn<'a> {
    shard: &'a KeyShard,
    hash: u64,
}

impl KeyLocks {
    fn take(&self, name: &str, key: &[u8]) -> KeyTurn<'_> {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.hasher.build_hasher();
        name.hash(&mut h);
        key.hash(&mut h);
        let hash = h.finish();
        let shard = &self.shards[(hash % KEY_LOCK_SHARDS as u64) as usize];
        let mut held = shard.held.lock();
        while held.0.contains(&hash) {
            held.1 += 1;
            shard.freed.wait(&mut held);
            held.1 -= 1;
        }
        held.0.push(hash);
        KeyTurn { shard, hash }
    }
}

impl Drop for KeyTurn<'_> {
    fn drop(&mut self) {
        let mut held = self.shard.held.lock();
        if let Some(i) = held.0.iter().position(|&h| h == self.hash) {
            held.0.swap_remove(i);
        }
        if held.1 > 0 {
            self.shard.freed.notify_all();
        }
    }
}

/// The holder a publish found, and what becomes of it.
enum Holder {
    /// None: write a new event.
    Free,
    /// `Keep` found one.
    Keeps(EventId),
    /// Taken out of the wheel (or its queue) for a restatement or a replace: nothing else
    /// can deliver it until it is put back.
    Claimed(EventId),
    /// Handed to delivery: replaced under the cancel ordering.
    InFlight(EventId),
}

impl Inner {
    pub(crate) fn publish_with(
        &self,
        name: &str,
        body: &[u8],
        after: &After,
        options: &PublishOptions,
    ) -> Result<Published> {
        self.check_open()?;
        validate_name(name)?;
        if let Some((key, _)) = &options.key {
            validate_key(key)?;
        }
        let window_ms = match (options.window, &options.key) {
            (None, _) => 0,
            (Some(_), None) => {
                return Err(Error::invalid("a key window needs a key (KeyMode::Keep)"));
            }
            (Some(_), Some((_, mode))) if *mode != KeyMode::Keep => {
                return Err(Error::invalid("a key window applies to KeyMode::Keep only"));
            }
            (Some(w), Some(_)) => u64::try_from(w.as_millis()).unwrap_or(u64::MAX),
        };
        // Checked before any id is given out or a key taken: bad input writes nothing.
        let now_ms = self.clock.now_ms();
        let due_ms = after.resolve(now_ms)?;
        let check = Record::Publish(Publish::with_options(
            now_ms,
            PublishEntry {
                id: EventId(1),
                due_ms,
                name,
                body,
            },
            EventOptions {
                priority: options.priority,
                key: options.key.as_ref().map_or(&[][..], |(k, _)| k),
                mode: options.key.as_ref().map_or(KEY_NONE, |(_, m)| m.code()),
                window_ms,
                ..EventOptions::default()
            },
        ));
        super::check_publish_len(&check)?;
        let Some((key, mode)) = &options.key else {
            let id = self.write_with(name, body, due_ms, options.priority, None)?;
            return Ok(Published {
                id,
                outcome: KeyOutcome::New,
            });
        };
        let _turn = self.key_locks.take(name, key);
        let now_ms = self.clock.now_ms();
        let holder = self.find_holder(name, key, *mode, now_ms)?;
        let keyed = Some((&key[..], *mode, window_ms));
        match holder {
            Holder::Free => {
                let id = self.write_with(name, body, due_ms, options.priority, keyed)?;
                Ok(Published {
                    id,
                    outcome: KeyOutcome::New,
                })
            }
            Holder::Keeps(id) => Ok(Published {
                id,
                outcome: KeyOutcome::Kept,
            }),
            Holder::Claimed(held) if *mode == KeyMode::ReplaceBody => {
                match self.restate(held, key, body)? {
                    Some(published) => Ok(published),
                    // It was cancelled meanwhile: the key is free.
                    None => {
                        let id = self.write_with(name, body, due_ms, options.priority, keyed)?;
                        Ok(Published {
                            id,
                            outcome: KeyOutcome::New,
                        })
                    }
                }
            }
            Holder::Claimed(held) => {
                let written = self.write_replace(name, body, due_ms, options, key, held);
                let wake = self.core.lock().unclaim(held);
                if wake {
                    self.wake.notify();
                }
                written
            }
            Holder::InFlight(held) => {
                let _order = self.cancel_order.write();
                self.wait_outcomes_applied(|core| core.finishing(std::iter::once(held)));
                let pending = self
                    .core
                    .lock()
                    .index()
                    .state(held)
                    .is_some_and(EventState::is_pending);
                if pending {
                    self.write_replace(name, body, due_ms, options, key, held)
                } else {
                    // It finished meanwhile: the key is free.
                    let id = self.write_with(name, body, due_ms, options.priority, keyed)?;
                    Ok(Published {
                        id,
                        outcome: KeyOutcome::New,
                    })
                }
            }
        }
    }

    /// Who holds `key` of `name` for a publish in `mode`, claiming a holder that waits in the
    /// wheel (or its queue) when the publish will replace or restate it.
    fn find_holder(&self, name: &str, key: &[u8], mode: KeyMode, now_ms: i64) -> Result<Holder> {
        let mut core = self.core.lock();
        let verify = |id, at| self.has_key(id, at, key);
        if mode == KeyMode::Keep {
            return Ok(match core.index().key_taken(name, key, now_ms, verify)? {
                Some(id) => Holder::Keeps(id),
                None => Holder::Free,
            });
        }
        let Some(id) = core.index().key_holder(name, key, verify)? else {
            return Ok(Holder::Free);
        };
        let attempts = core.event(id).map_or(0, |e| e.attempts);
        Ok(if core.stage(id).is_none() && core.claim(id, attempts) {
            Holder::Claimed(id)
        } else {
            Holder::InFlight(id)
        })
    }

    /// Whether the publish record of event `id`, at `at`, was published with `key`: the
    /// index keeps only a fragment of each key's hash, the key itself is in the log.
    fn has_key(&self, id: EventId, at: Location, key: &[u8]) -> Result<bool> {
        let bytes = self.log.read(u64::from(at.segment), u64::from(at.offset))?;
        let record = Record::decode(bytes.kind(), bytes.payload()).map_err(|e| Error::Corrupt {
            file: crate::log::segment_name(u64::from(at.segment)).into(),
            offset: u64::from(at.offset),
            reason: format!("the publish of {id}: {e}"),
        })?;
        Ok(match record {
            Record::Publish(p) => {
                p.options().is_some_and(|o| o.key == key) && p.events().any(|e| e.id == id)
            }
            _ => false,
        })
    }

    /// Writes one event with options, durably, and applies it; its id.
    fn write_with(
        &self,
        name: &str,
        body: &[u8],
        due_ms: i64,
        priority: i8,
        key: Option<(&[u8], KeyMode, u64)>,
    ) -> Result<EventId> {
        let (id, now_ms) = self.new_id()?;
        let entry = PublishEntry {
            id,
            due_ms,
            name,
            body,
        };
        let entries = [entry];
        let record = if priority == 0 && key.is_none() {
            // Nothing a plain publish record cannot say.
            Record::Publish(Publish::new(None, now_ms, &entries))
        } else {
            Record::Publish(Publish::with_options(
                now_ms,
                entry,
                EventOptions {
                    priority,
                    key: key.map_or(&[][..], |k| k.0),
                    mode: key.map_or(KEY_NONE, |k| k.1.code()),
                    window_ms: key.map_or(0, |k| k.2),
                    ..EventOptions::default()
                },
            ))
        };
        self.write_publish(record)?;
        self.count_published(name, 1);
        Ok(id)
    }

    /// Writes a new event that cancels `held` in the same record.
    fn write_replace(
        &self,
        name: &str,
        body: &[u8],
        due_ms: i64,
        options: &PublishOptions,
        key: &[u8],
        held: EventId,
    ) -> Result<Published> {
        let (id, now_ms) = self.new_id()?;
        let record = Record::Publish(Publish::with_options(
            now_ms,
            PublishEntry {
                id,
                due_ms,
                name,
                body,
            },
            EventOptions {
                priority: options.priority,
                key,
                mode: KEY_REPLACE,
                replaces: Some(held),
                ..EventOptions::default()
            },
        ));
        super::check_publish_len(&record)?;
        let pos = self.log.append(&record)?;
        let cancelled = {
            let mut core = self.core.lock();
            let before = core.index().state(held);
            let (_, wake) = core.apply(pos, &record);
            let after = core.index().state(held);
            drop(core);
            if wake {
                self.wake.notify();
            }
            before.is_some_and(EventState::is_pending) && after == Some(EventState::Cancelled)
        };
        self.idle.notify_all();
        self.count_published(name, 1);
        if cancelled {
            self.count_cancelled(name, 1);
            Ok(Published {
                id,
                outcome: KeyOutcome::Replaced(held),
            })
        } else {
            Ok(Published {
                id,
                outcome: KeyOutcome::New,
            })
        }
    }

    /// Gives `held` (claimed) a new body: one record restating it with its own id, name,
    /// times, priority and key; then it goes back in the wheel at its due time. `None` if it
    /// stopped being pending meanwhile (a `cancel`).
    fn restate(&self, held: EventId, key: &[u8], body: &[u8]) -> Result<Option<Published>> {
        let written = self.write_restatement(held, key, body);
        let wake = self.core.lock().unclaim(held);
        if wake {
            self.wake.notify();
        }
        Ok((written? == Applied::Changed).then_some(Published {
            id: held,
            outcome: KeyOutcome::Updated,
        }))
    }

    fn write_restatement(&self, held: EventId, key: &[u8], body: &[u8]) -> Result<Applied> {
        let (name, priority, publish) = {
            let core = self.core.lock();
            let info = core
                .event(held)
                .ok_or_else(|| Error::invalid(format!("{held} vanished while claimed")))?;
            let reader = self.log.segment_reader(u64::from(info.body_at.segment));
            (info.name.to_string(), info.priority, (info.body_at, reader))
        };
        let (_, _, published_ms, first_due_ms) = super::delivery::read_publish(held, publish)
            .ok_or_else(|| {
                Error::invalid(format!("the publish record of {held} cannot be read"))
            })?;
        let record = Record::Publish(Publish::with_options(
            published_ms,
            PublishEntry {
                id: held,
                due_ms: first_due_ms,
                name: &name,
                body,
            },
            EventOptions {
                priority,
                key,
                mode: KEY_REPLACE_BODY,
                restates: true,
                ..EventOptions::default()
            },
        ));
        super::check_publish_len(&record)?;
        let pos = self.log.append(&record)?;
        Ok(self.apply(pos, &record).unwrap_or(Applied::Duplicate))
    }

    /// Pauses (`paused`) or resumes a name, durably. Writes nothing if it already is.
    pub(crate) fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        self.check_open()?;
        validate_name(name)?;
        let _turn = self.pause_lock.lock();
        if self.core.lock().is_paused(name) == paused {
            return Ok(());
        }
        let record = Record::Pause(Pause {
            name,
            paused,
            at_ms: self.clock.now_ms(),
        });
        let pos = self.log.append(&record)?;
        let applied = self.apply(pos, &record);
        debug_assert_eq!(applied, Ok(Applied::Changed));
        Ok(())
    }

    /// Paused names, sorted.
    pub(crate) fn paused(&self) -> Vec<String> {
        self.core
            .lock()
            .index()
            .paused()
            .map(str::to_string)
            .collect()
    }
}
