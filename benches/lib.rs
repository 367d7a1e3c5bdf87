//! Micro-benchmarks of afterlog (`cargo bench -p afterlog-microbench`): the timing wheel
//! against tokio-util's `DelayQueue` and a `BTreeMap`, and the memory of the event index.
//! The benchmarks are the `[[bench]]` targets; this library is empty.
