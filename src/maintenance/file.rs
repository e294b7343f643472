//! A sentinel file as a flag source: present = on.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{sync::oneshot, task::JoinHandle, time::MissedTickBehavior};

use super::{MaintenanceNotice, MaintenanceSwitch, Source};
use crate::RetryAfter;

/// The most of the file that is read: the format needs a line or two.
const MAX_LEN: u64 = 4096;

/// Switches maintenance on while a file exists: how a fleet of replicas is switched at once
/// through a mounted config volume (`touch /etc/app/maintenance` on, `rm` off).
///
/// The file is read every [`interval`](Self::interval) (default 5 s) by a task started with
/// [`spawn`](Self::spawn), or whenever you call [`check`](Self::check). Its content is optional:
///
/// | file | effect |
/// |---|---|
/// | absent | off |
/// | empty | on, the layer's default `Retry-After` |
/// | first line `120` (delta-seconds) | on, `Retry-After: 120` while the end is unknown |
/// | first line an HTTP-date, e.g. `Sun, 06 Nov 2033 08:49:37 GMT` | on until then: `Retry-After` counts down to it |
/// | further lines | the message clients see |
/// | more than 4 KiB | only the first 4 KiB count (a character cut there is dropped) |
/// | anything else (bad first line, not UTF-8) | **on**, default `Retry-After`; logged at warn level |
/// | present but unreadable (permissions, a directory) | **on**, default `Retry-After`; logged at warn level |
/// | a read that hangs (a FIFO, a stuck network volume) for longer than the interval | nothing changes; logged; the next checks wait for **that** read (no new one is started) and use its result once it finishes |
///
/// The file is a [source](Source::File) of its own: it turns **its** part of the switch on and
/// off, with its own notice, and leaves the others alone. Removing the file does not end
/// maintenance switched on by code or by the admin router, and
/// [`MaintenanceSwitch::disable`] (an admin `DELETE`) does not end maintenance while the file
/// exists: see the [precedence rule](super#sources). Use one sentinel file per switch. The poller
/// logs and applies **changes** only (the file appearing, disappearing or changing). No outcome
/// of a read panics or stops the poller.
///
/// The file is read on a thread of its own, never more than 4 KiB of it, and at most one read is
/// under way at a time. A read that hangs cannot be cancelled (an `open` blocked in the kernel
/// does not return): its thread is left behind, detached, and never delays the shutdown of the
/// runtime or of the process (a read on tokio's blocking pool would: dropping a runtime waits for
/// its blocking tasks). As the read runs outside tokio, a check under `tokio::time::pause()` may
/// time out before a read that takes real time finishes.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_5xx::maintenance::{MaintenanceSwitch, SentinelFile};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let switch = MaintenanceSwitch::new();
/// let poller = SentinelFile::new("/etc/myapp/maintenance", switch.clone())
///     .interval(Duration::from_secs(2))
///     .spawn();
/// // ... serve with MaintenanceLayer::new(switch) ...
/// poller.abort();
/// # }
/// ```
#[derive(Debug)]
pub struct SentinelFile {
    path: PathBuf,
    switch: MaintenanceSwitch,
    interval: Duration,
    last: Option<FileState>,
    /// A read that outlived its check. A blocking read cannot be cancelled: rather than start
    /// another one per tick (and pile stuck threads up), later checks wait for this one.
    in_flight: Option<oneshot::Receiver<io::Result<Vec<u8>>>>,
    /// Blocking reads started, for the tests.
    #[cfg(test)]
    reads_started: usize,
}

/// What [`SentinelFile::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileState {
    /// No file: maintenance off.
    Absent,
    /// A file with readable content: maintenance on with this notice.
    Present(MaintenanceNotice),
    /// A file whose content could not be understood: maintenance on, default `Retry-After`.
    Invalid,
    /// A file that exists but cannot be read: maintenance on, default `Retry-After`.
    Unreadable(io::ErrorKind),
    /// The read did not finish within the interval (or its thread could not be started): nothing
    /// changed.
    TimedOut,
}

impl SentinelFile {
    /// Watches `path` and drives `switch`. Default interval: 5 seconds.
    pub fn new(path: impl Into<PathBuf>, switch: MaintenanceSwitch) -> Self {
        Self {
            path: path.into(),
            switch,
            interval: Duration::from_secs(5),
            last: None,
            in_flight: None,
            #[cfg(test)]
            reads_started: 0,
        }
    }

    /// How often the file is read (at least 1 ms). A check waits this long for the read; one that
    /// takes longer reports [`FileState::TimedOut`], and later checks wait for the same read
    /// instead of starting another.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts polling on the current tokio runtime: a first check at once, then one per
    /// interval. Abort the returned handle to stop (the switch keeps its last state).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn(mut self) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                self.check().await;
            }
        })
    }

    /// Reads the file once and, if what it says changed since the last check, updates the
    /// switch. Returns what was found.
    ///
    /// If an earlier check's read has not finished yet (a hung file system), no new read is
    /// started: this check waits up to the interval for that one and reports
    /// [`FileState::TimedOut`] if it is still stuck.
    pub async fn check(&mut self) -> FileState {
        let mut read = match self.in_flight.take() {
            Some(read) => read,
            None => match start_read(self.path.clone()) {
                Ok(read) => {
                    #[cfg(test)]
                    {
                        self.reads_started += 1;
                    }
                    read
                }
                Err(e) => {
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        "maintenance sentinel file: cannot start a thread to read it; keeping \
                         the current state"
                    );
                    return FileState::TimedOut;
                }
            },
        };
        let state = match tokio::time::timeout(self.interval, &mut read).await {
            Err(_) => {
                self.in_flight = Some(read);
                FileState::TimedOut
            }
            // The reading thread ended without an answer (it does not: it cannot panic).
            Ok(Err(_)) => FileState::Unreadable(io::ErrorKind::Other),
            Ok(Ok(Err(e))) if e.kind() == io::ErrorKind::NotFound => FileState::Absent,
            Ok(Ok(Err(e))) => FileState::Unreadable(e.kind()),
            Ok(Ok(Ok(bytes))) => parse(&bytes),
        };
        if state == FileState::TimedOut {
            tracing::warn!(
                path = %self.path.display(),
                timeout = ?self.interval,
                "maintenance sentinel file: read timed out (the next checks wait for it); \
                 keeping the current state"
            );
            return state;
        }
        if self.last.as_ref() == Some(&state) {
            return state;
        }
        let path = self.path.display();
        match &state {
            FileState::Absent => {
                tracing::info!(path = %path, "maintenance sentinel file absent");
                self.switch.set(Source::File, None);
            }
            FileState::Present(notice) => {
                tracing::info!(path = %path, "maintenance sentinel file present");
                self.switch.set(Source::File, Some(notice.clone()));
            }
            FileState::Invalid => {
                tracing::warn!(
                    path = %path,
                    "maintenance sentinel file: first line is neither delta-seconds nor an \
                     HTTP-date; maintenance on with the default Retry-After"
                );
                self.switch
                    .set(Source::File, Some(MaintenanceNotice::new()));
            }
            FileState::Unreadable(kind) => {
                tracing::warn!(
                    path = %path,
                    error = %kind,
                    "maintenance sentinel file exists but cannot be read; maintenance on with \
                     the default Retry-After"
                );
                self.switch
                    .set(Source::File, Some(MaintenanceNotice::new()));
            }
            FileState::TimedOut => unreachable!("handled above"),
        }
        self.last = Some(state.clone());
        state
    }
}

/// Starts reading at most [`MAX_LEN`] bytes of `path` on a detached thread of its own; the
/// result arrives on the returned channel.
///
/// Not tokio's blocking pool: a read that never returns (a FIFO without a writer, a hung network
/// volume) would hold a thread of that pool, and dropping the runtime waits for those, so the
/// process could not shut down. A detached thread holds nothing up.
fn start_read(path: PathBuf) -> io::Result<oneshot::Receiver<io::Result<Vec<u8>>>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("sentinel-read".to_owned())
        .spawn(move || {
            // The receiver is gone if the check gave up and the poller was dropped: fine.
            let _ = tx.send(read_head(&path));
        })?;
    Ok(rx)
}

/// The first [`MAX_LEN`] bytes of `path`.
fn read_head(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_LEN)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`parse`] and the read limit for the fuzz targets (`crate::__fuzz`).
#[cfg(fuzzing)]
pub(crate) mod fuzz {
    pub(crate) const MAX_LEN: u64 = super::MAX_LEN;

    pub(crate) fn parse(bytes: &[u8]) -> super::FileState {
        super::parse(bytes)
    }
}

fn parse(bytes: &[u8]) -> FileState {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        // Only the first `MAX_LEN` bytes are read: the cut may fall inside a multi-byte
        // character. Drop that partial character, not the whole file.
        Err(e) if e.error_len().is_none() && bytes.len() as u64 == MAX_LEN => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return FileState::Invalid,
    };
    let text = text.trim();
    if text.is_empty() {
        return FileState::Present(MaintenanceNotice::new());
    }
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let mut notice = match first.trim().parse::<RetryAfter>() {
        Ok(RetryAfter::Delay(d)) => MaintenanceNotice::new().retry_after(d),
        Ok(RetryAfter::Date(t)) => MaintenanceNotice::new().until(t),
        Err(_) => return FileState::Invalid,
    };
    let message = rest.trim();
    if !message.is_empty() {
        notice = notice.message(message);
    }
    FileState::Present(notice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(parse(b""), FileState::Present(MaintenanceNotice::new()));
        assert_eq!(parse(b" \n"), FileState::Present(MaintenanceNotice::new()));
        assert_eq!(
            parse(b"120\n"),
            FileState::Present(MaintenanceNotice::new().retry_after(Duration::from_secs(120)))
        );
        let date = httpdate::parse_http_date("Sun, 06 Nov 2033 08:49:37 GMT").unwrap();
        assert_eq!(
            parse(b"Sun, 06 Nov 2033 08:49:37 GMT\nBack soon.\nReally.\n"),
            FileState::Present(
                MaintenanceNotice::new()
                    .until(date)
                    .message("Back soon.\nReally.")
            )
        );
        assert_eq!(parse(b"soon-ish"), FileState::Invalid);
        assert_eq!(parse(b"\xff\xfe"), FileState::Invalid);
    }

    /// Only the first 4 KiB are read: a cut through a multi-byte character drops that character
    /// and keeps the rest, instead of judging the whole file invalid.
    #[test]
    fn a_cut_through_a_character_keeps_the_rest() {
        // "60\n" is 3 bytes and 'é' is 2: the cut at 4096 falls inside an 'é'.
        let mut content = b"60\n".to_vec();
        content.extend("é".repeat(3000).as_bytes());
        let cut = &content[..MAX_LEN as usize];
        assert!(
            std::str::from_utf8(cut).is_err(),
            "the cut splits a character"
        );
        assert_eq!(
            parse(cut),
            FileState::Present(
                MaintenanceNotice::new()
                    .retry_after(Duration::from_secs(60))
                    .message("é".repeat(2046))
            )
        );
        // Invalid UTF-8 that is not at a cut is still invalid.
        assert_eq!(parse(b"60\n\xc3"), FileState::Invalid);
        let mut bad = content[..MAX_LEN as usize - 1].to_vec();
        bad[10] = 0xff;
        bad.push(b'x');
        assert_eq!(parse(&bad), FileState::Invalid);
    }

    /// Checks until the read in flight has finished, for at most 5 s of real time (the read runs
    /// on a thread of its own, in real time, whatever tokio's clock does).
    async fn check_until_read(file: &mut SentinelFile) -> FileState {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let state = file.check().await;
            if state != FileState::TimedOut || std::time::Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A read that hangs (here: a FIFO nobody writes to) is not restarted on every check: the
    /// thread it holds cannot be taken back, so a new read per tick would pile threads up. The
    /// check times out on tokio's clock (paused here): the hung thread does not hold it still.
    #[cfg(unix)]
    #[tokio::test(start_paused = true)]
    async fn a_hung_read_is_waited_for_not_restarted() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let fifo =
            std::env::temp_dir().join(format!("tower-5xx-fifo-{}-{nanos}", std::process::id()));
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        /// Removes the FIFO, and first releases a reader blocked in `open` (opening a FIFO
        /// read-write never blocks on Linux; closing it gives the reader end-of-file).
        struct Cleanup(PathBuf);
        impl Cleanup {
            /// Opens the FIFO for writing and closes it, on a thread: the open waits for the
            /// reader to open its end (whenever it gets there), which then reads end-of-file.
            fn release(&self) {
                let path = self.0.clone();
                std::thread::spawn(move || {
                    drop(std::fs::OpenOptions::new().write(true).open(path))
                });
            }
        }
        impl Drop for Cleanup {
            fn drop(&mut self) {
                drop(
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&self.0),
                );
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let cleanup = Cleanup(fifo.clone());

        let switch = MaintenanceSwitch::new();
        let mut file = SentinelFile::new(&fifo, switch.clone()).interval(Duration::from_secs(5));
        for _ in 0..5 {
            assert_eq!(file.check().await, FileState::TimedOut);
        }
        assert_eq!(
            file.reads_started, 1,
            "one blocking read, not one per check"
        );
        assert!(!switch.is_enabled());

        // Once the stuck read finishes, its result is used: an empty file means "on".
        cleanup.release();
        assert_eq!(
            check_until_read(&mut file).await,
            FileState::Present(MaintenanceNotice::new())
        );
        assert!(switch.is_enabled());
        assert_eq!(file.reads_started, 1);
        // And the next check reads afresh.
        drop(cleanup);
        assert_eq!(check_until_read(&mut file).await, FileState::Absent);
        assert_eq!(file.reads_started, 2);
        assert!(!switch.is_enabled());
    }
}
