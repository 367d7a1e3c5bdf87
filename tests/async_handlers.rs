//! The async contract (DESIGN.md, "Wave 2 API contract", Async): async handlers on tokio
//! runtimes (current-thread and multi-thread), timeouts that drop the future, attempts not
//! bounded by worker threads, sync and async handlers of one name, and the publishing futures.

mod common;

use afterlog::{
    After, AsyncContext, Engine, Event, EventState, HandlerError, HandlerOptions, ManualClock,
    Options, Reader, RetryPolicy,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::Duration;

const T0: i64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(30);

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .compaction_interval(None)
        .default_policy(RetryPolicy::fixed(Duration::from_secs(60)))
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Both kinds of runtime, by name.
fn runtimes() -> [(&'static str, tokio::runtime::Runtime); 2] {
    [
        ("current-thread", current_thread()),
        ("multi-thread", multi_thread()),
    ]
}

/// Waits for the engine to be idle without blocking the runtime's thread.
async fn idle(engine: &Engine) -> bool {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.wait_idle(WAIT))
        .await
        .unwrap()
}

fn assert_send<T: Send>(_: &T) {}

/// An engine on a fresh directory and manual clock, its async handlers on a multi-thread
/// runtime given with `Options::runtime`.
fn engine_on_a_runtime() -> (
    tempfile::TempDir,
    ManualClock,
    tokio::runtime::Runtime,
    Engine,
) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rt = multi_thread();
    let engine =
        Engine::open_with(dir.path(), options(&clock).runtime(rt.handle().clone())).unwrap();
    (dir, clock, rt, engine)
}

/// Waits until the directory is free again (its engine closed), then reads `id`'s state.
async fn state_once_free(
    dir: &std::path::Path,
    clock: &ManualClock,
    id: afterlog::EventId,
) -> EventState {
    let reopened = loop {
        match Engine::open_with(dir, options(clock)) {
            Ok(engine) => break engine,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    drop(reopened);
    state_of(&Reader::open(dir).unwrap(), id)
}

fn state_of(reader: &Reader, id: afterlog::EventId) -> EventState {
    reader
        .event_history(id)
        .unwrap()
        .expect("the event is in the log")
        .row
        .state
}

/// An event's records, decoded, as text.
fn records_of(reader: &Reader, id: afterlog::EventId) -> String {
    let history = reader
        .event_history(id)
        .unwrap()
        .expect("the event is in the log");
    history
        .records
        .iter()
        .map(|(_, kind, payload)| {
            format!("{:?}", afterlog::Record::decode(*kind, payload).unwrap())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn an_async_handler_acknowledges_on_either_runtime() {
    for (kind, rt) in runtimes() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        rt.block_on(async {
            let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let s = seen.clone();
            engine.on_async("user.joined", move |event: Event, _ctx: AsyncContext| {
                let s = s.clone();
                async move {
                    tokio::task::yield_now().await;
                    s.lock().unwrap().push(event.body().to_vec());
                    Ok(())
                }
            });
            engine.start();
            let publish = engine.publish_async("user.joined", b"a", After::NOW);
            assert_send(&publish);
            let id = publish.await.unwrap();
            engine
                .publish_async("user.joined", b"b", After::delay(Duration::from_secs(5)))
                .await
                .unwrap();
            assert!(idle(&engine).await, "{kind}");
            assert_eq!(*seen.lock().unwrap(), vec![b"a".to_vec()], "{kind}");
            clock.advance(Duration::from_secs(5));
            assert!(idle(&engine).await, "{kind}");
            assert_eq!(seen.lock().unwrap().len(), 2, "{kind}");
            let m = engine.metrics();
            assert_eq!((m.published, m.delivered, m.acked), (2, 2, 2), "{kind}");
            let close = engine.close_async();
            assert_send(&close);
            close.await.unwrap();
            let reader = Reader::open(dir.path()).unwrap();
            assert_eq!(state_of(&reader, id), EventState::Succeeded);
        });
    }
}

/// Sets its flag when dropped: proves a future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_timeout_on_the_engine_clock_drops_the_future() {
    for (kind, rt) in runtimes() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        rt.block_on(async {
            let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
            let dropped = Arc::new(AtomicBool::new(false));
            let after_await = Arc::new(AtomicBool::new(false));
            let (d, a, c) = (dropped.clone(), after_await.clone(), clock.clone());
            engine.on_async_with(
                "slow",
                HandlerOptions::default().timeout(Duration::from_secs(10)),
                move |_event, ctx| {
                    let (d, a, c) = (d.clone(), a.clone(), c.clone());
                    async move {
                        let _flag = DropFlag(d);
                        assert_eq!(ctx.remaining(), Duration::from_secs(10));
                        // Past the timeout on the engine's clock, then wait for ever.
                        c.advance(Duration::from_secs(11));
                        std::future::pending::<()>().await;
                        a.store(true, Ordering::SeqCst);
                        Ok(())
                    }
                },
            );
            engine.start();
            let id = engine.publish_async("slow", b"", After::NOW).await.unwrap();
            assert!(idle(&engine).await, "{kind}");
            let m = engine.metrics();
            assert_eq!((m.timed_out, m.retried, m.acked), (1, 1, 0), "{kind}");
            // The task dropped the future at its `.await`.
            for _ in 0..1000 {
                if dropped.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(
                dropped.load(Ordering::SeqCst),
                "{kind}: the future was not dropped"
            );
            assert!(!after_await.load(Ordering::SeqCst));
            engine.close_async().await.unwrap();
            let reader = Reader::open(dir.path()).unwrap();
            let text = records_of(&reader, id);
            assert!(text.contains("FUNCTION_TIME_OUT"), "{kind}: {text}");
        });
    }
}

#[test]
fn remaining_tells_the_time_left_in_both_contexts() {
    let (_dir, clock, _rt, engine) = engine_on_a_runtime();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, c) = (seen.clone(), clock.clone());
    engine.on_with(
        "n",
        HandlerOptions::default().timeout(Duration::from_secs(8)),
        move |_e, ctx| {
            s.lock().unwrap().push(("sync", ctx.remaining()));
            c.advance(Duration::from_secs(3));
            s.lock().unwrap().push(("sync", ctx.remaining()));
            ctx.set_timeout(Duration::from_secs(20));
            s.lock().unwrap().push(("sync", ctx.remaining()));
            Ok(())
        },
    );
    let (s, c) = (seen.clone(), clock.clone());
    engine.on_async("n", move |_e, ctx| {
        let (s, c) = (s.clone(), c.clone());
        async move {
            s.lock().unwrap().push(("async", ctx.remaining()));
            c.advance(Duration::from_secs(2));
            s.lock().unwrap().push(("async", ctx.remaining()));
            ctx.set_timeout(Duration::from_secs(1));
            s.lock().unwrap().push(("async", ctx.remaining()));
            Ok(())
        }
    });
    engine.start();
    engine.publish("n", b"", After::NOW).unwrap();
    assert!(engine.wait_idle(WAIT));
    let secs = |s| Duration::from_secs(s);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("sync", secs(8)),
            ("sync", secs(5)),
            ("sync", secs(17)),
            ("async", secs(5)),
            ("async", secs(3)),
            ("async", Duration::ZERO),
        ]
    );
    // The async handler's shortened timeout had passed when it returned.
    assert_eq!(engine.metrics().timed_out, 1);
    engine.close().unwrap();
}

#[test]
fn sync_and_async_handlers_of_one_name_run_in_registration_order() {
    for (_kind, rt) in runtimes() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        rt.block_on(async {
            let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
            let log = Arc::new(Mutex::new(Vec::new()));
            for i in 0..4 {
                let log = log.clone();
                if i % 2 == 0 {
                    engine.on("mixed", move |e, _ctx| {
                        log.lock()
                            .unwrap()
                            .push((i, e.time_ms(), e.delay_ms(), e.attempt()));
                        if e.attempt() == 1 && i == 2 {
                            return Err(HandlerError::msg("once"));
                        }
                        Ok(())
                    });
                } else {
                    engine.on_async("mixed", move |e, _ctx| {
                        let log = log.clone();
                        async move {
                            tokio::task::yield_now().await;
                            log.lock()
                                .unwrap()
                                .push((i, e.time_ms(), e.delay_ms(), e.attempt()));
                            Ok(())
                        }
                    });
                }
            }
            engine.start();
            engine
                .publish_async("mixed", b"", After::delay(Duration::from_secs(1)))
                .await
                .unwrap();
            clock.advance(Duration::from_secs(1));
            assert!(idle(&engine).await);
            clock.advance(Duration::from_secs(60));
            assert!(idle(&engine).await);
            let log = log.lock().unwrap().clone();
            let order: Vec<(u32, u32)> = log.iter().map(|&(i, _, _, a)| (i, a)).collect();
            assert_eq!(
                order,
                vec![
                    (0, 1),
                    (1, 1),
                    (2, 1),
                    (3, 1),
                    (0, 2),
                    (1, 2),
                    (2, 2),
                    (3, 2)
                ]
            );
            assert!(log.iter().all(|&(_, t, d, _)| t == T0 && d == 1000));
            let m = engine.metrics();
            assert_eq!((m.retried, m.acked), (1, 1));
            engine.close_async().await.unwrap();
        });
    }
}

/// Counts handlers running at once and the most that ever did.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `n` events whose handlers wait until `release` is notified; returns the most that ran
/// at once.
fn most_at_once(n: usize, options: Options, release_at: usize) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let rt = multi_thread();
    rt.block_on(async {
        let engine = Engine::open_with(dir.path(), options.workers(1)).unwrap();
        let gauge = Arc::new(Gauge::default());
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (g, r) = (gauge.clone(), release.clone());
        engine.on_async_with(
            "wait",
            HandlerOptions::default().timeout(Duration::from_secs(60)),
            move |_e, _ctx| {
                let (g, r) = (g.clone(), r.clone());
                async move {
                    g.enter();
                    let _permit = r.acquire().await.unwrap();
                    g.leave();
                    Ok(())
                }
            },
        );
        engine.start();
        for _ in 0..n {
            engine.publish_async("wait", b"", After::NOW).await.unwrap();
        }
        // Wait until as many as can run are running, then let them all go.
        for _ in 0..6000 {
            if gauge.now.load(Ordering::SeqCst) >= release_at {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A little longer: more than the bound must not start.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = engine.metrics();
        assert_eq!(m.async_running as usize, gauge.now.load(Ordering::SeqCst));
        // Events due but not yet prepared are in flight too: the workers wait for room.
        assert!(m.async_running + m.async_waiting <= m.in_flight, "{m:?}");
        assert!(m.async_waiting > 0, "{m:?}");
        release.add_permits(n);
        assert!(idle(&engine).await);
        assert_eq!(engine.metrics().acked, n as u64);
        engine.close_async().await.unwrap();
        gauge.most.load(Ordering::SeqCst)
    })
}

#[test]
fn async_attempts_are_not_bounded_by_worker_threads() {
    let clock = ManualClock::new(T0);
    let most = most_at_once(1500, options(&clock), 1024);
    assert!(most >= 1024, "only {most} ran at once");
    assert!(
        most <= afterlog::DEFAULT_ASYNC_ATTEMPTS,
        "{most} ran at once"
    );
}

#[test]
fn an_option_bounds_async_attempts() {
    let clock = ManualClock::new(T0);
    let most = most_at_once(50, options(&clock).async_attempts(7), 7);
    assert_eq!(most, 7);
}

#[test]
fn wait_idle_counts_running_async_attempts() {
    let (_dir, _clock, _rt, engine) = engine_on_a_runtime();
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    engine.on_async("wait", move |_e, _ctx| {
        let r = r.clone();
        async move {
            r.notified().await;
            Ok(())
        }
    });
    engine.start();
    engine.publish("wait", b"", After::NOW).unwrap();
    assert!(!engine.wait_idle(Duration::from_millis(200)));
    assert_eq!(engine.metrics().in_flight, 1);
    release.notify_one();
    assert!(engine.wait_idle(WAIT));
    assert_eq!(engine.metrics().acked, 1);
    engine.close().unwrap();
}

#[test]
fn an_engine_started_outside_a_runtime_runs_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let ran_on = Arc::new(Mutex::new(None));
    let r = ran_on.clone();
    engine.on_async("n", move |_e, _ctx| {
        let r = r.clone();
        async move {
            // A tokio timer works: the runtime has its drivers.
            tokio::time::sleep(Duration::from_millis(1)).await;
            *r.lock().unwrap() = std::thread::current().name().map(str::to_string);
            Ok(())
        }
    });
    engine.start();
    engine.publish("n", b"", After::NOW).unwrap();
    assert!(engine.wait_idle(WAIT));
    assert_eq!(ran_on.lock().unwrap().as_deref(), Some("afterlog-async"));
    engine.close().unwrap();
}

#[test]
fn failures_and_panics_of_async_handlers_fail_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rt = multi_thread();
    rt.block_on(async {
        let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
        engine.on_async("fails", |_e, _ctx| async {
            Err(HandlerError::msg("upstream said no"))
        });
        engine.on_async("panics", |_e, _ctx| async {
            tokio::task::yield_now().await;
            panic!("handler bug");
        });
        engine.start();
        let a = engine
            .publish_async("fails", b"", After::NOW)
            .await
            .unwrap();
        let b = engine
            .publish_async("panics", b"", After::NOW)
            .await
            .unwrap();
        assert!(idle(&engine).await);
        let m = engine.metrics();
        assert_eq!((m.retried, m.panicked, m.acked), (2, 1, 0));
        engine.close_async().await.unwrap();
        let reader = Reader::open(dir.path()).unwrap();
        let text = records_of(&reader, a);
        assert!(text.contains("upstream said no"), "{text}");
        let text = records_of(&reader, b);
        assert!(text.contains("handler bug"), "{text}");
    });
}

#[test]
fn push_cancel_and_cancel_job_async_are_durable_when_they_complete() {
    for (kind, rt) in runtimes() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        rt.block_on(async {
            let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
            let ran = Arc::new(AtomicUsize::new(0));
            let r = ran.clone();
            engine.on_async("q", move |_e, _ctx| {
                let r = r.clone();
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            });
            engine.start();
            let job = engine
                .push_async("q", ["a", "b", "c"], Duration::from_secs(10))
                .await
                .unwrap();
            let one = engine
                .publish_async("q", b"x", After::delay(Duration::from_secs(10)))
                .await
                .unwrap();
            let cancel = engine.cancel_async(one);
            assert_send(&cancel);
            assert!(cancel.await.unwrap(), "{kind}");
            assert!(!engine.cancel_async(one).await.unwrap(), "{kind}");
            let cancel_job = engine.cancel_job_async(job);
            assert_send(&cancel_job);
            assert_eq!(cancel_job.await.unwrap(), 3, "{kind}");
            assert_eq!(engine.job_stats(job).unwrap().cancelled, 3);
            // Bad input: an error, nothing written.
            assert!(engine.cancel_async(afterlog::EventId(9_999)).await.is_err());
            assert!(engine.publish_async("", b"", After::NOW).await.is_err());
            assert!(
                engine
                    .push_async("q", Vec::<&[u8]>::new(), Duration::ZERO)
                    .await
                    .is_err()
            );
            clock.advance(Duration::from_secs(10));
            assert!(idle(&engine).await);
            assert_eq!(ran.load(Ordering::SeqCst), 0, "{kind}");
            let m = engine.metrics();
            assert_eq!((m.published, m.cancelled), (4, 4), "{kind}");
            engine.close_async().await.unwrap();
            let reader = Reader::open(dir.path()).unwrap();
            assert_eq!(state_of(&reader, one), EventState::Cancelled);
            assert_eq!(reader.summary().unwrap().events.len(), 4);
        });
    }
}

/// A started engine whose sync handler of `n` counts its calls.
fn counting_engine(dir: &std::path::Path, clock: &ManualClock) -> (Engine, Arc<AtomicUsize>) {
    let engine = Engine::open_with(dir, options(clock)).unwrap();
    let acked = Arc::new(AtomicUsize::new(0));
    let a = acked.clone();
    engine.on("n", move |_e, _ctx| {
        a.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    engine.start();
    (engine, acked)
}

/// A waker that unparks the thread that polls.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: the futures need no runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[test]
fn the_futures_need_no_runtime_and_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (engine, acked) = counting_engine(dir.path(), &clock);
    let id = block_on(engine.publish_async("n", b"one", After::NOW)).unwrap();
    assert!(engine.wait_idle(WAIT));
    assert_eq!(acked.load(Ordering::SeqCst), 1);
    // Many futures polled together, on one thread, complete with fewer syncs than records.
    let fsyncs = engine.metrics().fsyncs;
    let futures: Vec<Boxed<'_, afterlog::Result<afterlog::EventId>>> = (0..64)
        .map(|_| Box::pin(engine.publish_async("n", b"many", After::NOW)) as Boxed<'_, _>)
        .collect();
    let ids = block_on(JoinAll::new(futures));
    assert_eq!(ids.len(), 64);
    assert!(ids.iter().all(|r| r.as_ref().is_ok_and(|i| *i > id)));
    assert!(engine.wait_idle(WAIT));
    assert_eq!(acked.load(Ordering::SeqCst), 65);
    let publish_syncs = engine.metrics().fsyncs - fsyncs;
    // 64 publishes, their attempts and outcomes: far fewer syncs than 3 × 64 records.
    assert!(publish_syncs < 64 * 3, "{publish_syncs} syncs");
    block_on(engine.close_async()).unwrap();
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Polls every future until all are done; their outputs in order.
struct JoinAll<'a, T>(Vec<Option<Boxed<'a, T>>>, Vec<Option<T>>);

impl<T> Unpin for JoinAll<'_, T> {}

impl<T> Future for JoinAll<'_, T> {
    type Output = Vec<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Vec<T>> {
        let this = self.get_mut();
        if this.1.is_empty() {
            this.1 = (0..this.0.len()).map(|_| None).collect();
        }
        let mut pending = false;
        for (slot, out) in this.0.iter_mut().zip(this.1.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *out = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(this.1.iter_mut().map(|o| o.take().unwrap()).collect())
        }
    }
}

impl<'a, T> JoinAll<'a, T> {
    fn new(futures: Vec<Boxed<'a, T>>) -> Self {
        JoinAll(futures.into_iter().map(Some).collect(), Vec::new())
    }
}

#[test]
fn a_dropped_publish_future_still_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (engine, acked) = counting_engine(dir.path(), &clock);
    let waker = Waker::noop();
    let mut cx = TaskContext::from_waker(waker);
    for _ in 0..20 {
        // Polled once (the record is queued), then dropped before it completes.
        let mut future = Box::pin(engine.publish_async("n", b"dropped", After::NOW));
        let _ = future.as_mut().poll(&mut cx);
        drop(future);
        let mut future =
            Box::pin(engine.publish_async("n", b"later", After::delay(Duration::from_secs(5))));
        let _ = future.as_mut().poll(&mut cx);
        drop(future);
    }
    // Each record became durable and was applied without its future: delivered, no restart.
    for _ in 0..1000 {
        if acked.load(Ordering::SeqCst) == 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(engine.wait_idle(WAIT));
    assert_eq!(acked.load(Ordering::SeqCst), 20);
    clock.advance(Duration::from_secs(5));
    assert!(engine.wait_idle(WAIT));
    assert_eq!(acked.load(Ordering::SeqCst), 40);
    // A dropped cancel still cancels.
    let id = engine
        .publish("n", b"", After::delay(Duration::from_secs(5)))
        .unwrap();
    let mut cancel = Box::pin(engine.cancel_async(id));
    let _ = cancel.as_mut().poll(&mut cx);
    drop(cancel);
    // Its write lock is released once it is applied: a blocking cancel gets through.
    let _ = engine.cancel(id).unwrap();
    clock.advance(Duration::from_secs(5));
    assert!(engine.wait_idle(WAIT));
    assert_eq!(acked.load(Ordering::SeqCst), 40);
    engine.close().unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    assert_eq!(state_of(&reader, id), EventState::Cancelled);
}

#[test]
fn close_async_from_an_async_handler_writes_its_outcome() {
    for (_kind, rt) in runtimes() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        rt.block_on(async {
            let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
            let closed = Arc::new(AtomicBool::new(false));
            let (e, c) = (engine.clone(), closed.clone());
            engine.on_async("closer", move |_event, _ctx| {
                let (e, c) = (e.clone(), c.clone());
                async move {
                    e.close_async().await.unwrap();
                    c.store(true, Ordering::SeqCst);
                    Ok(())
                }
            });
            engine.start();
            let id = engine
                .publish_async("closer", b"", After::NOW)
                .await
                .unwrap();
            for _ in 0..2000 {
                if closed.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(closed.load(Ordering::SeqCst));
            // The handler's outcome is written, then the directory is released.
            assert_eq!(
                state_once_free(dir.path(), &clock, id).await,
                EventState::Succeeded
            );
            drop(engine);
        });
    }
}

/// The blocking `close` from an async handler's `poll`, and from a sync handler sharing its
/// name with an async one (run on the blocking pool), on a multi-thread runtime: neither waits
/// for its own attempt; another attempt in flight is drained; the caller's outcome is written
/// before the directory is released.
#[test]
fn a_blocking_close_from_an_async_attempt_does_not_wait_for_itself() {
    for from_sync_handler in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let rt = multi_thread();
        rt.block_on(async {
            let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
            let (closed, other_done) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let started = Arc::new(tokio::sync::Notify::new());
            let (e, c) = (engine.clone(), closed.clone());
            if from_sync_handler {
                engine.on("closer", move |_event, _ctx| {
                    e.close().unwrap();
                    c.store(true, Ordering::SeqCst);
                    Ok(())
                });
                engine.on_async("closer", |_event, _ctx| async { Ok(()) });
            } else {
                engine.on_async("closer", move |_event, _ctx| {
                    let (e, c) = (e.clone(), c.clone());
                    async move {
                        e.close().unwrap();
                        c.store(true, Ordering::SeqCst);
                        Ok(())
                    }
                });
            }
            let (s, d) = (started.clone(), other_done.clone());
            engine.on_async("other", move |_event, _ctx| {
                let (s, d) = (s.clone(), d.clone());
                async move {
                    s.notify_one();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    d.store(true, Ordering::SeqCst);
                    Ok(())
                }
            });
            engine.start();
            let other = engine
                .publish_async("other", b"", After::NOW)
                .await
                .unwrap();
            started.notified().await;
            let id = engine
                .publish_async("closer", b"", After::NOW)
                .await
                .unwrap();
            for _ in 0..2000 {
                if closed.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(
                closed.load(Ordering::SeqCst),
                "close from the handler returned"
            );
            assert!(
                other_done.load(Ordering::SeqCst),
                "the other attempt was drained first"
            );
            assert_eq!(
                state_once_free(dir.path(), &clock, id).await,
                EventState::Succeeded
            );
            assert_eq!(
                state_once_free(dir.path(), &clock, other).await,
                EventState::Succeeded
            );
            drop(engine);
        });
    }
}

#[test]
fn dropping_the_last_engine_on_a_runtime_does_not_block_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rt = current_thread();
    rt.block_on(async {
        let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
        let release = Arc::new(tokio::sync::Notify::new());
        let started = Arc::new(tokio::sync::Notify::new());
        let (r, s) = (release.clone(), started.clone());
        engine.on_async_with(
            "wait",
            HandlerOptions::default().timeout(Duration::from_secs(60)),
            move |_e, _ctx| {
                let (r, s) = (r.clone(), s.clone());
                async move {
                    s.notify_one();
                    r.notified().await;
                    Ok(())
                }
            },
        );
        engine.start();
        let id = engine.publish_async("wait", b"", After::NOW).await.unwrap();
        started.notified().await;
        // Were the drop to wait for the handler here, on the runtime's only thread, nothing
        // could release it: the test would hang.
        drop(engine);
        release.notify_one();
        assert_eq!(
            state_once_free(dir.path(), &clock, id).await,
            EventState::Succeeded
        );
    });
}

#[test]
fn an_async_handler_can_cancel_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let rt = multi_thread();
    rt.block_on(async {
        let engine =
            Engine::open_with(dir.path(), options(&clock).workers(1).async_attempts(1)).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        engine.on_async("q", move |_e, ctx| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                let n = ctx.cancel_job().await?;
                assert!(n >= 1, "cancelled {n}");
                Ok(())
            }
        });
        engine.start();
        let job = engine
            .push_async("q", ["a", "b", "c", "d"], Duration::ZERO)
            .await
            .unwrap();
        assert!(idle(&engine).await);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        let stats = engine.job_stats(job).unwrap();
        assert_eq!((stats.success, stats.cancelled), (1, 3));
        engine.close_async().await.unwrap();
    });
}

#[test]
fn a_runtime_shut_down_under_the_engine_fails_its_attempts_and_another_takes_over() {
    let (dir, clock, rt, engine) = engine_on_a_runtime();
    let started = Arc::new(AtomicUsize::new(0));
    let ran_on = Arc::new(Mutex::new(None));
    let (s, r) = (started.clone(), ran_on.clone());
    engine.on_async("n", move |e, _ctx| {
        let (s, r) = (s.clone(), r.clone());
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            if e.attempt() == 1 {
                std::future::pending::<()>().await;
            }
            *r.lock().unwrap() = std::thread::current().name().map(str::to_string);
            Ok(())
        }
    });
    engine.start();
    let id = engine.publish("n", b"", After::NOW).unwrap();
    for _ in 0..2000 {
        if started.load(Ordering::SeqCst) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(started.load(Ordering::SeqCst), 1);
    // The application's runtime goes away mid-attempt: the attempt fails, it is not lost.
    drop(rt);
    assert!(engine.wait_idle(WAIT));
    assert_eq!(engine.metrics().retried, 1);
    // Its retry runs on the engine's own runtime.
    clock.advance(Duration::from_secs(60));
    assert!(engine.wait_idle(WAIT));
    assert_eq!(engine.metrics().acked, 1);
    assert_eq!(ran_on.lock().unwrap().as_deref(), Some("afterlog-async"));
    engine.close().unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    let text = records_of(&reader, id);
    assert!(text.contains("shut down"), "{text}");
}

/// A sync handler sharing its name with an async one runs on the blocking pool: timed out,
/// its thread cannot be stopped, so it counts as abandoned until it returns.
#[test]
fn a_timed_out_sync_handler_on_the_blocking_pool_counts_as_abandoned() {
    let (_dir, clock, _rt, engine) = engine_on_a_runtime();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    engine.on_with(
        "mixed",
        HandlerOptions::default().timeout(Duration::from_secs(1)),
        move |_e, _ctx| {
            started_tx.send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
            Ok(())
        },
    );
    engine.on_async("mixed", |_e, _ctx| async { Ok(()) });
    engine.start();
    engine.publish("mixed", b"", After::NOW).unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    clock.advance(Duration::from_secs(2));
    assert!(engine.wait_idle(WAIT));
    let m = engine.metrics();
    assert_eq!((m.timed_out, m.retried), (1, 1));
    // The retry's due time is a minute away; the thread still runs the handler.
    for _ in 0..2000 {
        if engine.metrics().abandoned_threads == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(engine.metrics().abandoned_threads, 1);
    release_tx.send(()).unwrap();
    for _ in 0..2000 {
        if engine.metrics().abandoned_returned == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let m = engine.metrics();
    assert_eq!((m.abandoned_threads, m.abandoned_returned), (0, 1));
    engine.close().unwrap();
}

/// Holds every sync while closed.
#[derive(Debug)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    syncs_waiting: AtomicUsize,
}

impl common::hooked::Hooks for Gate {
    fn sync(&self) -> std::io::Result<()> {
        let mut open = self.open.lock().unwrap();
        self.syncs_waiting.fetch_add(1, Ordering::SeqCst);
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        self.syncs_waiting.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// With the writer stuck in a sync and 64 MiB of records queued behind it, a `publish_async`
/// does not block its thread waiting for room: its future is pending, and completes once the
/// writer moves on. (A blocked thread would hang this test: it opens the gate only after.)
#[test]
fn a_full_queue_makes_publish_async_wait_in_its_future_not_on_its_thread() {
    let disk = common::hooked::Hooked::new(Gate {
        open: std::sync::Mutex::new(true),
        opened: std::sync::Condvar::new(),
        syncs_waiting: AtomicUsize::new(0),
    });
    let gate = disk.hooks.clone();
    let clock = ManualClock::new(T0);
    let engine = Engine::open_storage(Arc::new(disk.clone()), options(&clock)).unwrap();
    // Close the gate once the directory is made, then queue one record the writer takes and
    // gets stuck syncing.
    *gate.open.lock().unwrap() = false;
    let waker = Waker::noop();
    let mut cx = TaskContext::from_waker(waker);
    let body = vec![7u8; 200 << 10];
    let mut first = Box::pin(engine.publish_async("n", &body, After::NOW));
    assert!(first.as_mut().poll(&mut cx).is_pending());
    for _ in 0..2000 {
        if gate.syncs_waiting.load(Ordering::SeqCst) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        gate.syncs_waiting.load(Ordering::SeqCst) > 0,
        "the writer never synced"
    );
    // 400 records of 200 KiB: more than the 64 MiB the queue holds.
    let mut futures: Vec<_> = (0..400)
        .map(|_| Box::pin(engine.publish_async("n", &body, After::NOW)))
        .collect();
    for future in &mut futures {
        assert!(future.as_mut().poll(&mut cx).is_pending());
    }
    *gate.open.lock().unwrap() = true;
    gate.opened.notify_all();
    let mut ids = vec![block_on(first).unwrap()];
    for future in futures {
        ids.push(block_on(future).unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 401);
    assert_eq!(engine.metrics().published, 401);
    engine.close().unwrap();
}
