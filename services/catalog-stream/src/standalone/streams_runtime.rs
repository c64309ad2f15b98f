//! The standalone process runs its stream tasks (the outbox relay and the topologies) on a
//! runtime of their own, at a lower CPU priority than the HTTP API's.

use anyhow::Context;

/// Nice value of the threads that run the relay and the topologies (0 is the default; 19 the
/// lowest priority).
const STREAMS_NICE: i32 = 10;

/// Most blocking threads of the streams runtime (tokio's default is 512). The image pipeline
/// has up to 256 records in flight, each with its file and sled calls on the blocking pool;
/// without a bound a burst grows the pool to hundreds of threads, each with its own allocator
/// heap and stack, for no throughput since they all queue on the same disk and sled's lock.
/// Each thread also keeps part-used pages of mimalloc's per-thread heap, which a thread that
/// ends idle abandons: fewer threads, less memory, images collected as fast (the figures per
/// pool size are in `infrastructure/BENCHMARKS.md`).
const STREAMS_BLOCKING_THREADS: usize = 4;

/// The runtime of the relay and the topologies: two workers (and their blocking pool) at a
/// lower CPU priority than the API's runtime.
///
/// On one runtime, the image pipeline's tasks (fetches, image files, state, the embedded log)
/// fill the async workers under a burst of POSTs and the requests queue behind them (an
/// order of magnitude fewer POSTs/s, `infrastructure/BENCHMARKS.md`). With its own
/// lower-priority threads, the pipeline runs on whatever CPU the API leaves and catches up
/// when the burst ends; acknowledged products are on disk either way.
pub fn streams_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(STREAMS_BLOCKING_THREADS)
        .thread_name("streams-worker")
        .on_thread_start(lower_thread_priority)
        .enable_all()
        .build()
        .context("cannot start the streams runtime")
}

/// Lowers the calling thread's CPU priority to [`STREAMS_NICE`] (Linux: nice applies per thread).
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    if let Err(error) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), STREAMS_NICE)
    {
        tracing::debug!(%error, "cannot lower the priority of a streams thread");
    }
}
