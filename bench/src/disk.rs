//! The disk's physical limit beside Keel's WAL on the same directory: fio's
//! sequential O_DIRECT write bandwidth (256 KiB) and 4 KiB write+fdatasync
//! latency and IOPS, then Keel's WAL doing the same two things through its
//! own I/O path (glommio, O_DIRECT, group commit).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use keel_node::io::glommio_disk::GlommioDisk;
use keel_node::wal::{RecordMeta, USER_KIND_MIN, Wal, WalConfig};
use serde::Serialize;

/// One measured line of the disk table.
#[derive(Debug, Clone, Serialize)]
pub struct DiskFigure {
    /// Who measured it (`fio` or `keel wal`).
    pub tool: String,
    /// What.
    pub test: String,
    /// MiB/s (bandwidth tests).
    pub mib_per_s: Option<f64>,
    /// Operations per second (sync tests).
    pub iops: Option<f64>,
    /// Median latency, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile latency, µs.
    pub p99_us: Option<f64>,
}

fn fio(dir: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("fio")
        .arg(format!("--directory={}", dir.display()))
        .args(args)
        .arg("--output-format=json")
        .output()
        .context("run fio (apt-get install fio)")?;
    anyhow::ensure!(out.status.success(), "fio failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("fio's JSON")?;
    json.pointer("/jobs/0").cloned().context("fio reported no job")
}

fn number(job: &serde_json::Value, pointer: &str) -> Option<f64> {
    job.pointer(pointer).and_then(serde_json::Value::as_f64)
}

/// fio's two figures.
pub fn fio_figures(dir: &Path) -> anyhow::Result<Vec<DiskFigure>> {
    let seq = fio(
        dir,
        &[
            "--name=seq256k",
            "--rw=write",
            "--bs=256k",
            "--size=1g",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=4",
            "--end_fsync=1",
        ],
    )?;
    let bw = number(&seq, "/write/bw_bytes").map(|b| b / (1024.0 * 1024.0));
    let sync = fio(
        dir,
        &[
            "--name=sync4k",
            "--rw=write",
            "--bs=4k",
            "--size=256m",
            "--direct=1",
            "--ioengine=sync",
            "--fdatasync=1",
            // Overwrite a written file, as the WAL overwrites its preallocated,
            // zero-filled segments (fresh extents cost a journal commit each).
            "--overwrite=1",
            "--runtime=10",
            "--time_based",
        ],
    )?;
    // Per operation: the write (clat) plus its fdatasync (sync.lat).
    let ns = |p: &str| number(&sync, p).map(|n| n / 1000.0);
    let p50 =
        ns("/write/clat_ns/percentile/50.000000").zip(ns("/sync/lat_ns/percentile/50.000000")).map(|(a, b)| a + b);
    let p99 =
        ns("/write/clat_ns/percentile/99.000000").zip(ns("/sync/lat_ns/percentile/99.000000")).map(|(a, b)| a + b);
    let _ = std::fs::remove_file(dir.join("seq256k.0.0"));
    let _ = std::fs::remove_file(dir.join("sync4k.0.0"));
    Ok(vec![
        DiskFigure {
            tool: "fio".into(),
            test: "sequential write 256 KiB, O_DIRECT, iodepth 4".into(),
            mib_per_s: bw,
            iops: None,
            p50_us: None,
            p99_us: None,
        },
        DiskFigure {
            tool: "fio".into(),
            test: "4 KiB overwrite + fdatasync, O_DIRECT, one at a time".into(),
            mib_per_s: None,
            iops: number(&sync, "/write/iops"),
            p50_us: p50,
            p99_us: p99,
        },
    ])
}

/// Keel's WAL on `dir`: 512 MiB of 252 KiB records (one fdatasync per 32 MiB),
/// then 4,000 single 100-byte appends, each waited for.
pub fn keel_wal_figures(dir: &Path) -> anyhow::Result<Vec<DiskFigure>> {
    let wal_dir = dir.join("keel-wal");
    let _ = std::fs::remove_dir_all(&wal_dir);
    std::fs::create_dir_all(&wal_dir)?;
    let path = wal_dir.clone();
    let figures = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { measure_wal(&path).await })
        .map_err(|e| anyhow::anyhow!("start glommio: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("glommio executor: {e:?}"))??;
    let _ = std::fs::remove_dir_all(&wal_dir);
    Ok(figures)
}

#[allow(clippy::cast_precision_loss)]
async fn measure_wal(dir: &Path) -> anyhow::Result<Vec<DiskFigure>> {
    let (wal, _) = Wal::open(GlommioDisk::new(), dir, WalConfig::default()).await?;
    let mut index = 0u64;
    let mut meta = || {
        index += 1;
        RecordMeta { partition: 0, term: 1, index, kind: USER_KIND_MIN }
    };
    let big = vec![0x5au8; 252 * 1024];
    const BIG_RECORDS: u64 = 2048; // 504 MiB
    // Steady state: fill and reclaim segments until the recycle pool is
    // full, so that timed appends overwrite preallocated segments instead of
    // zero-filling new ones.
    for _ in 0..BIG_RECORDS / 2 {
        wal.append(meta(), &big).await?;
    }
    wal.reclaim_below(wal.next_lsn()).await?;
    let start = Instant::now();
    for chunk in 0..BIG_RECORDS / 128 {
        let mut last = None;
        for _ in 0..128 {
            last = Some(wal.submit(meta(), &big)?);
        }
        if let Some(lsn) = last {
            wal.wait_durable(lsn).await?;
        }
        if chunk % 2 == 1 {
            wal.reclaim_below(wal.next_lsn()).await?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let mib = (BIG_RECORDS * big.len() as u64) as f64 / (1024.0 * 1024.0);
    wal.reclaim_below(wal.next_lsn()).await?;
    let small = vec![0x5au8; 100];
    let mut latency = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let start = Instant::now();
    const SMALL: u64 = 4000;
    for _ in 0..SMALL {
        let began = Instant::now();
        wal.append(meta(), &small).await?;
        latency.saturating_record(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX).max(1));
    }
    let elapsed = start.elapsed().max(Duration::from_nanos(1));
    Ok(vec![
        DiskFigure {
            tool: "keel wal".into(),
            test: "sequential append, 252 KiB records, fdatasync per 32 MiB".into(),
            mib_per_s: Some(mib / seconds),
            iops: None,
            p50_us: None,
            p99_us: None,
        },
        DiskFigure {
            tool: "keel wal".into(),
            test: "100-byte append, each made durable (one 4 KiB O_DSYNC write), one at a time".into(),
            mib_per_s: None,
            iops: Some(SMALL as f64 / elapsed.as_secs_f64()),
            p50_us: Some(latency.value_at_quantile(0.5) as f64),
            p99_us: Some(latency.value_at_quantile(0.99) as f64),
        },
    ])
}

/// The disk table in Markdown.
#[must_use]
pub fn table(figures: &[DiskFigure]) -> String {
    let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.0}"));
    let mut out = String::from("| tool | test | MiB/s | IOPS | p50 µs | p99 µs |\n|---|---|---:|---:|---:|---:|\n");
    for f in figures {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            f.tool,
            f.test,
            cell(f.mib_per_s),
            cell(f.iops),
            cell(f.p50_us),
            cell(f.p99_us)
        ));
    }
    out
}
