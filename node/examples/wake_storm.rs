//! An experiment, not a test: looks for glommio lost wake-ups outside Keel.
//!
//! Two glommio executors (like two shards) loop on short timers (50 µs to
//! 3 ms), 4 KiB O_DIRECT reads and, in mode `all` or `blocking`, truncates
//! (which glommio runs on its blocking thread and reports back through the
//! eventfd on its latency ring). A monitor thread watches each executor's
//! loop count; a count that stands still for 2 s is a lost wake-up, and the
//! monitor prints every thread's wait channel and every io_uring's fdinfo,
//! then exits 1. ARCHITECTURE.md ("Lost wake-ups") has what it found.
//!
//! Run beside two CPU-bound processes (`python3 -c 'while True: pass'`):
//! `cargo run --release -p keel-node --example wake_storm -- DIR SECONDS [timers|blocking|all]`
//! (DIR on a real disk, not tmpfs).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const EXECUTORS: usize = 2;
const STALL: Duration = Duration::from_secs(2);

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "target/wake-storm".into()));
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(300);
    let mode = args.next().unwrap_or_else(|| "all".into());
    std::fs::create_dir_all(&dir).expect("create the directory");
    let counters: Vec<Arc<AtomicU64>> = (0..EXECUTORS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (i, counter) in counters.iter().enumerate() {
        let counter = Arc::clone(counter);
        let (path, scratch) = (dir.join(format!("f{i}")), dir.join(format!("s{i}")));
        std::fs::write(&path, vec![7_u8; 1 << 20]).expect("write the file to read");
        let mode = mode.clone();
        glommio::LocalExecutorBuilder::default()
            .name(&format!("storm-{i}"))
            .spawn(move || storm(path, scratch, mode, counter))
            .expect("start an executor");
    }
    watch(&counters, Duration::from_secs(secs));
}

async fn storm(path: PathBuf, scratch: PathBuf, mode: String, counter: Arc<AtomicU64>) {
    let file = glommio::io::DmaFile::open(&path).await.expect("open the file to read");
    let scratch =
        glommio::io::OpenOptions::new().create(true).write(true).read(true).dma_open(&scratch).await.expect("scratch");
    let (timers, blocking) = (mode != "blocking", mode != "timers");
    let mut n: u64 = 0;
    loop {
        n += 1;
        if timers {
            glommio::timer::sleep(Duration::from_micros(50 + (n * 7919) % 3000)).await;
        }
        if blocking {
            scratch.truncate((n % 8) * 4096).await.expect("truncate");
        }
        if n.is_multiple_of(3) {
            file.read_at_aligned((n % 256) * 4096, 4096).await.expect("read");
        }
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn watch(counters: &[Arc<AtomicU64>], run_for: Duration) {
    let start = Instant::now();
    let mut last: Vec<(u64, Instant)> = counters.iter().map(|_| (0, Instant::now())).collect();
    while start.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(100));
        for (i, (counter, (count, since))) in counters.iter().zip(last.iter_mut()).enumerate() {
            let now = counter.load(Ordering::Relaxed);
            if now != *count {
                (*count, *since) = (now, Instant::now());
            } else if since.elapsed() > STALL {
                println!("executor {i} stuck at {now} loops for {:?}", since.elapsed());
                dump();
                std::process::exit(1);
            }
        }
    }
    let counts: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!("no stall in {run_for:?}: loops per executor {counts:?}");
}

/// Every thread's name and wait channel, and every io_uring's fdinfo.
fn dump() {
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let path = task.path();
        println!("task {:?} {} {}", task.file_name(), read(&path.join("comm")).trim(), read(&path.join("wchan")));
    }
    for fd in std::fs::read_dir("/proc/self/fd").into_iter().flatten().flatten() {
        if std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy().contains("io_uring")) {
            let name = fd.file_name().to_string_lossy().into_owned();
            println!("== fd {name}\n{}", read(Path::new(&format!("/proc/self/fdinfo/{name}"))));
        }
    }
}
