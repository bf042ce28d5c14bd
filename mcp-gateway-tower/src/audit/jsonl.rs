//! [`JsonlSink`]: a JSON Lines file written by its own thread, rotated by size.

#[allow(unused_imports)]
use super::*;

/// Settings of [`JsonlSink`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// The file. Rotated files are `<path>.1` (newest) … `<path>.<keep>`.
    pub path: PathBuf,
    /// Rotate when the file passes this size. Default 100 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept. Default 5.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Records buffered between the request path and the writer thread,
    /// per serving thread (each records into a batch of its own, which the
    /// writer takes every 10 ms). Default 65 536.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// What to do when the buffer is full. Default `drop`.
    #[serde(default)]
    pub overflow: Overflow,
}

fn default_max_bytes() -> u64 {
    100 << 20
}
fn default_keep() -> usize {
    5
}
fn default_buffer() -> usize {
    65_536
}

/// Lines recorded on one thread and not yet taken by the writer.
#[derive(Default)]
struct Batch {
    lines: Vec<u8>,
    records: usize,
}

/// State shared by a [`Batched`] sink and its writer thread.
struct JsonlShared {
    /// Records waiting for the writer, serialised by the recording thread
    /// into a batch of its own. Its lock is taken by that thread and, every
    /// 10 ms, by the writer, so it is never contended in practice; and
    /// unlike a shared queue of lines, nothing is allocated per record,
    /// no cache line is shared by the serving threads, and no buffer is
    /// freed on a thread other than the one that allocated it.
    batches: ThreadLocal<Mutex<Batch>>,
    /// Records one batch may hold (`JsonlConfig::buffer`).
    cap: usize,
    /// How often the writer takes the batches.
    drain_every: Duration,
    /// Flush requests and completions (generation counters).
    flush: Mutex<(u64, u64)>,
    flushed: Condvar,
    stop: AtomicBool,
}

/// Where a [`Batched`] sink's writer thread puts the lines it takes.
pub(crate) trait Lines: Send + 'static {
    /// Whole lines (records, each ending in `\n`).
    fn write(&mut self, lines: &[u8]);
    /// After each pass of the writer: `now` when a flush was asked for or
    /// the sink is closing (everything must be out), else when the output
    /// judges it due.
    fn flush(&mut self, now: bool);
}

/// The recording side and writer thread every line-oriented sink shares:
/// each recording thread serialises its records into a batch of its own;
/// the writer takes the batches every `drain_every` (and at once on a
/// flush) and hands them to its [`Lines`].
pub(crate) struct Batched {
    shared: Arc<JsonlShared>,
    overflow: Overflow,
    dropped: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A JSON Lines file, written by its own thread. See the module docs.
///
/// Each recording thread serialises its records into a batch of its own;
/// the writer takes the batches every 10 ms (and at once on
/// [`flush`](AuditSink::flush)), writes them out, rotates the file by size
/// (between lines), and flushes on [`close`](JsonlSink::close) or drop.
pub struct JsonlSink(Batched);

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlSink")
            .field("queued", &self.0.queued())
            .finish()
    }
}

/// How often the writer takes the batches.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

impl JsonlSink {
    /// Opens (appends to) the file and starts the writer.
    pub fn open(cfg: JsonlConfig) -> std::io::Result<Self> {
        Self::open_draining_every(cfg, DRAIN_EVERY)
    }

    pub(crate) fn open_draining_every(
        cfg: JsonlConfig,
        drain_every: Duration,
    ) -> std::io::Result<Self> {
        let file = open_append(&cfg.path)?;
        let size = file.metadata()?.len();
        let (cap, overflow) = (cfg.buffer, cfg.overflow);
        let out = FileLines {
            out: BufWriter::with_capacity(64 << 10, file),
            size,
            cfg,
        };
        Batched::start(out, cap, overflow, drain_every, "mcp-audit-jsonl").map(JsonlSink)
    }

    /// Writes everything queued, stops the writer and waits for it.
    pub fn close(&self) {
        self.0.close()
    }
}

impl Batched {
    /// Starts the writer thread, named `name`, over `out`; `cap` records
    /// per recording thread's batch at most.
    pub(crate) fn start(
        out: impl Lines,
        cap: usize,
        overflow: Overflow,
        drain_every: Duration,
        name: &str,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(JsonlShared {
            batches: ThreadLocal::new(),
            cap: cap.max(1),
            drain_every,
            flush: Mutex::new((0, 0)),
            flushed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let w = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || writer(out, w))?;
        Ok(Batched {
            shared,
            overflow,
            dropped: AtomicU64::new(0),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub(crate) fn queued(&self) -> usize {
        self.shared.batches.iter().map(|b| lock(b).records).sum()
    }

    /// Writes everything queued, stops the writer and waits for it.
    pub(crate) fn close(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = lock(&self.thread).take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Batched {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// The file side of a [`JsonlSink`].
struct FileLines {
    cfg: JsonlConfig,
    out: BufWriter<File>,
    size: u64,
}

impl Lines for FileLines {
    fn write(&mut self, lines: &[u8]) {
        write_lines(&self.cfg, &mut self.out, &mut self.size, lines);
    }
    fn flush(&mut self, _now: bool) {
        // Whatever is buffered goes to disk after each pass.
        let _ = self.out.flush();
    }
}

fn writer(mut out: impl Lines, shared: Arc<JsonlShared>) {
    let mut taken = Vec::new();
    loop {
        // Note a flush request before draining, so everything recorded
        // before the request is written when it is acknowledged.
        let wanted = lock(&shared.flush).0;
        let stopping = shared.stop.load(Ordering::SeqCst);
        for batch in shared.batches.iter() {
            {
                let mut b = lock(batch);
                if b.records == 0 {
                    continue;
                }
                // The thread gets the writer's empty buffer (with its
                // capacity) and keeps recording at once.
                std::mem::swap(&mut b.lines, &mut taken);
                b.records = 0;
            }
            out.write(&taken);
            taken.clear();
            if taken.capacity() > 4 << 20 {
                // A burst's buffer is not kept for ever.
                taken = Vec::new();
            }
        }
        // Everything taken: put out what is buffered.
        out.flush(stopping || lock(&shared.flush).1 < wanted);
        {
            let mut f = lock(&shared.flush);
            if f.1 < wanted {
                f.1 = wanted;
                shared.flushed.notify_all();
            }
        }
        if stopping {
            // `record` checks `stop` under its batch's lock, so nothing
            // can be added to a batch after this last pass took it.
            break;
        }
        std::thread::park_timeout(shared.drain_every);
    }
    out.flush(true);
    let mut f = lock(&shared.flush);
    f.1 = f.0;
    shared.flushed.notify_all();
}

/// Writes whole lines, rotating the file once it reaches its size (between
/// lines, as a file never ends mid-record).
fn write_lines(cfg: &JsonlConfig, out: &mut BufWriter<File>, size: &mut u64, mut lines: &[u8]) {
    while !lines.is_empty() {
        let need = cfg.max_bytes.saturating_sub(*size).max(1) as usize;
        // Through the end of the line that takes the file to its size, or
        // everything when the file stays below it.
        let cut = match lines.get(need - 1..) {
            Some(rest) => memchr::memchr(b'\n', rest).map_or(lines.len(), |i| need + i),
            None => lines.len(),
        };
        if out.write_all(&lines[..cut]).is_err() {
            tracing::error!(path = %cfg.path.display(), "audit log write failed");
        }
        *size += cut as u64;
        lines = &lines[cut..];
        if *size >= cfg.max_bytes {
            match rotate(cfg, out) {
                Ok(()) => *size = 0,
                Err(err) => tracing::error!(error = %err, "audit log rotation failed"),
            }
        }
    }
}

fn rotate(cfg: &JsonlConfig, out: &mut BufWriter<File>) -> std::io::Result<()> {
    out.flush()?;
    if cfg.keep == 0 {
        let f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&cfg.path)?;
        *out = BufWriter::with_capacity(64 << 10, f);
        return Ok(());
    }
    for i in (1..cfg.keep).rev() {
        let from = rotated(&cfg.path, i);
        if from.exists() {
            std::fs::rename(&from, rotated(&cfg.path, i + 1))?;
        }
    }
    std::fs::rename(&cfg.path, rotated(&cfg.path, 1))?;
    *out = BufWriter::with_capacity(64 << 10, open_append(&cfg.path)?);
    Ok(())
}

impl AuditSink for JsonlSink {
    fn record(&self, event: &AuditEventRef<'_>) {
        self.0.record(event)
    }
    fn saturated(&self) -> bool {
        self.0.saturated()
    }
    fn dropped(&self) -> u64 {
        self.0.dropped()
    }
    fn flush(&self) {
        self.0.flush()
    }
}

impl AuditSink for Batched {
    fn record(&self, event: &AuditEventRef<'_>) {
        let batch = self.shared.batches.get_or(Mutex::default);
        let mut b = lock(batch);
        if b.records >= self.shared.cap || self.shared.stop.load(Ordering::SeqCst) {
            drop(b);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        write_json(event, &mut b.lines);
        b.lines.push(b'\n');
        b.records += 1;
    }

    fn saturated(&self) -> bool {
        self.overflow == Overflow::Refuse
            && self
                .shared
                .batches
                .get()
                .is_some_and(|b| lock(b).records >= self.shared.cap)
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn flush(&self) {
        let thread = lock(&self.thread);
        let Some(t) = thread.as_ref() else { return };
        let mut f = lock(&self.shared.flush);
        f.0 += 1;
        let want = f.0;
        t.thread().unpark();
        drop(thread);
        let deadline = Instant::now() + Duration::from_secs(10);
        while f.1 < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("audit log flush timed out");
                return;
            }
            f = self
                .shared
                .flushed
                .wait_timeout(f, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
