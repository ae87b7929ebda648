//! Creating, attaching and claiming a segment; the liveness words in its header.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use boson_shared::plane::UnixMs;

use crate::ends::{ControlEnd, DataplaneEnd};
use crate::layout::{HeaderError, Incarnation, Layout, PAGE, SegmentSpec, Side, SpecError, to_u64};
use crate::mem::{Mem, memfd};
use crate::ring::{Ring, RingStatus};
use crate::stats::{Snapshot, StatsBlock, StatsError};

/// Where a segment's memory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// An anonymous memfd: both planes in one process (`bosonserver run`).
    Memfd,
    /// A file, normally under `/dev/shm`, that the other process attaches by path. It
    /// must not exist yet; it outlives both processes until someone removes it.
    Path(PathBuf),
}

/// A worker core's index, `0..cores`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreId(pub u16);

impl CoreId {
    /// The index as a `usize`.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A process id, as the side that wrote it saw itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pid(pub u32);

/// What one side last wrote about itself in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SideState {
    /// Its current (or last) incarnation.
    pub incarnation: Incarnation,
    /// Its pid while attached; `None` after a clean detach (a killed process leaves its pid
    /// behind: use `attached`).
    pub pid: Option<Pid>,
    /// Whether a process holds the side's end now. Exact: the kernel releases a dead
    /// process's lock, so this turns false the moment a killed side is gone.
    pub attached: bool,
}

/// The peer side has a new incarnation: it (re)attached since the last look, and must be
/// brought up to date (the control plane re-pushes every grant; the dataplane re-announces
/// its connected nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerAttached {
    /// The peer's new incarnation.
    pub incarnation: Incarnation,
    /// Its pid, if it is still attached.
    pub pid: Option<Pid>,
}

/// Why a segment could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The spec is out of bounds.
    #[error("invalid segment spec: {0}")]
    Spec(#[from] SpecError),
    /// The path is taken (perhaps by a segment the other side is using).
    #[error("segment {} already exists", path.display())]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// The file or memfd could not be created, sized or mapped.
    #[error("cannot create segment {}: {source}", path.display())]
    Io {
        /// The path (`memfd` for a memfd).
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Why an existing segment could not be attached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The file could not be opened or mapped.
    #[error("cannot open segment {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The header does not match this build or the expected spec.
    #[error("segment {}: {source}", path.display())]
    Header {
        /// The path.
        path: PathBuf,
        /// What differs.
        source: HeaderError,
    },
}

impl AttachError {
    /// The header problem, if that is what this is.
    pub fn header(&self) -> Option<&HeaderError> {
        match self {
            Self::Header { source, .. } => Some(source),
            Self::Io { .. } => None,
        }
    }
}

/// Why [`Segment::open_or_create`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Creating failed.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// Attaching failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// Why a side's end could not be claimed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// This process already holds that end of this segment (through this `Segment` or a
    /// clone of it).
    #[error("the {side} end of this segment is already claimed in this process")]
    Claimed {
        /// The side.
        side: Side,
    },
    /// Another attach holds it: a second control plane or dataplane on the same segment
    /// (or, in the same process, another `Segment::attach` of the same file).
    #[error("the {side} end of this segment is held by another attach")]
    HeldElsewhere {
        /// The side.
        side: Side,
    },
    /// The lock could not be taken.
    #[error("cannot lock the {side} end of this segment: {source}")]
    Lock {
        /// The side.
        side: Side,
        /// The cause.
        source: io::Error,
    },
}

/// A mapped segment: the header, every core's command and event ring, every core's stats
/// block. Cheap to clone; the mapping lives until the last clone, end and [`Observer`] is
/// dropped.
///
/// Each side then claims its end, once per process: [`Segment::control`] and
/// [`Segment::dataplane`].
#[derive(Clone)]
pub struct Segment {
    shared: Arc<Shared>,
}

/// What every handle of one attach shares.
pub(crate) struct Shared {
    pub(crate) mem: Arc<Mem>,
    pub(crate) layout: Layout,
    path: Option<PathBuf>,
    /// Which ends this attach has handed out (indexed like `Side as usize`).
    claimed: [AtomicBool; 2],
}

impl Segment {
    /// Creates a zeroed segment of shape `spec` and writes its header.
    ///
    /// With [`Backing::Path`], the file is built under a temporary name next to `path` and
    /// linked into place only once its header is complete, so an attacher never sees a
    /// half-initialised segment; it fails with [`CreateError::Exists`] if `path` exists.
    /// The file's mode is 0600: both processes must run as the same user.
    pub fn create(spec: SegmentSpec, backing: Backing) -> Result<Self, CreateError> {
        let layout = Layout::of(spec)?;
        let (mem, path) = match backing {
            Backing::Memfd => {
                let io = |source| CreateError::Io {
                    path: PathBuf::from("memfd"),
                    source,
                };
                let file = memfd(c"boson-channel").map_err(io)?;
                file.set_len(to_u64(layout.len)).map_err(io)?;
                let mem = Mem::map(file, layout.len).map_err(io)?;
                layout.write_header(mem.words());
                (mem, None)
            }
            Backing::Path(path) => (create_file(&layout, &path)?, Some(path)),
        };
        Ok(Self::new(mem, layout, path))
    }

    /// Attaches the segment at `path`, whatever its shape, after checking its magic,
    /// layout version and that its length fits its geometry.
    pub fn attach(path: impl AsRef<Path>) -> Result<Self, AttachError> {
        let path = path.as_ref();
        let io = |source| AttachError::Io {
            path: path.to_owned(),
            source,
        };
        let header = |source| AttachError::Header {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        if file_len < to_u64(PAGE) {
            return Err(header(HeaderError::TooShort { len: file_len }));
        }
        let first_page = Mem::map(file.try_clone().map_err(io)?, PAGE).map_err(io)?;
        let layout = Layout::read_header(first_page.words(), file_len).map_err(header)?;
        drop(first_page);
        let mem = Mem::map(file, layout.len).map_err(io)?;
        Ok(Self::new(mem, layout, Some(path.to_owned())))
    }

    /// [`attach`](Self::attach), then checks every field against `spec`: what the
    /// attaching side was configured with.
    pub fn attach_expecting(
        path: impl AsRef<Path>,
        spec: &SegmentSpec,
    ) -> Result<Self, AttachError> {
        let path = path.as_ref();
        let segment = Self::attach(path)?;
        segment
            .shared
            .layout
            .expect(spec)
            .map_err(|source| AttachError::Header {
                path: path.to_owned(),
                source,
            })?;
        Ok(segment)
    }

    /// Attaches the segment at `path` if there is one (checked against `spec`), else
    /// creates it: for two processes either of which may start first.
    pub fn open_or_create(spec: SegmentSpec, path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref();
        // Two rounds settle any race: if our create loses, the winner's file is complete.
        for _ in 0..2 {
            match Self::attach_expecting(path, &spec) {
                Ok(segment) => return Ok(segment),
                Err(AttachError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                }
                Err(err) => return Err(err.into()),
            }
            match Self::create(spec, Backing::Path(path.to_owned())) {
                Ok(segment) => return Ok(segment),
                Err(CreateError::Exists { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        let segment = Self::attach_expecting(path, &spec)?;
        Ok(segment)
    }

    fn new(mem: Mem, layout: Layout, path: Option<PathBuf>) -> Self {
        Self {
            shared: Arc::new(Shared {
                mem: Arc::new(mem),
                layout,
                path,
                claimed: [AtomicBool::new(false), AtomicBool::new(false)],
            }),
        }
    }

    /// The segment's shape.
    pub fn spec(&self) -> SegmentSpec {
        self.shared.layout.spec
    }

    /// The file, unless it is a memfd.
    pub fn path(&self) -> Option<&Path> {
        self.shared.path.as_deref()
    }

    /// A read-only view for metrics and liveness checks; needs no claim.
    pub fn observer(&self) -> Observer {
        Observer::new(Arc::clone(&self.shared))
    }

    /// Claims the control plane's end: bumps the control incarnation and writes our pid.
    pub fn control(&self) -> Result<ControlEnd, ClaimError> {
        let claim = Claim::take(&self.shared, Side::Control)?;
        Ok(ControlEnd::new(&self.shared, claim))
    }

    /// Claims the dataplane's end: bumps the dataplane incarnation and writes our pid.
    pub fn dataplane(&self) -> Result<DataplaneEnd, ClaimError> {
        let claim = Claim::take(&self.shared, Side::Dataplane)?;
        Ok(DataplaneEnd::new(&self.shared, claim))
    }
}

impl Shared {
    pub(crate) fn command_ring(&self, core: usize) -> Ring {
        Ring::new(Arc::clone(&self.mem), self.layout.command_ring(core))
    }

    pub(crate) fn event_ring(&self, core: usize) -> Ring {
        Ring::new(Arc::clone(&self.mem), self.layout.event_ring(core))
    }

    pub(crate) fn stats_block(&self, core: usize) -> StatsBlock {
        StatsBlock::new(
            Arc::clone(&self.mem),
            self.layout.stats_block(core),
            usize::from(self.layout.spec.stats_slots),
        )
    }

    pub(crate) fn cores(&self) -> usize {
        usize::from(self.layout.spec.cores)
    }

    fn side_state(&self, side: Side) -> SideState {
        let words = self.mem.words();
        // Acquire: pairs with the AcqRel bump in `Claim::take`.
        let incarnation = Incarnation(words[side.incarnation_word()].load(Ordering::Acquire));
        // Relaxed: informational; the lock below is the authority on liveness.
        let pid = words[side.pid_word()].load(Ordering::Relaxed);
        let claimed_here = self.claimed[side as usize].load(Ordering::Acquire);
        // A failed probe (which needs a broken descriptor) reads as "not attached".
        let attached = claimed_here
            || self
                .mem
                .is_locked_elsewhere(side.lock_byte())
                .unwrap_or(false);
        SideState {
            incarnation,
            pid: u32::try_from(pid).ok().filter(|&pid| pid != 0).map(Pid),
            attached,
        }
    }
}

/// Tracks the peer's incarnation for one end (or one core of an end).
pub(crate) struct PeerWatch {
    side: Side,
    seen: Incarnation,
}

impl PeerWatch {
    pub(crate) fn new(peer: Side) -> Self {
        Self {
            side: peer,
            seen: Incarnation(0),
        }
    }

    pub(crate) fn poll(&mut self, shared: &Shared) -> Option<PeerAttached> {
        let state = shared.side_state(self.side);
        if state.incarnation == self.seen || state.incarnation.0 == 0 {
            return None;
        }
        self.seen = state.incarnation;
        Some(PeerAttached {
            incarnation: state.incarnation,
            pid: state.pid,
        })
    }
}

/// One side's claim on its end: held by every handle of that end, released (pid cleared,
/// lock dropped) with the last one.
pub(crate) struct Claim {
    pub(crate) shared: Arc<Shared>,
    side: Side,
    pub(crate) incarnation: Incarnation,
}

impl Claim {
    fn take(shared: &Arc<Shared>, side: Side) -> Result<Arc<Self>, ClaimError> {
        let flag = &shared.claimed[side as usize];
        if flag
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ClaimError::Claimed { side });
        }
        let locked = match shared.mem.try_lock(side.lock_byte()) {
            Ok(locked) => locked,
            Err(source) => {
                flag.store(false, Ordering::Release);
                return Err(ClaimError::Lock { side, source });
            }
        };
        if !locked {
            flag.store(false, Ordering::Release);
            return Err(ClaimError::HeldElsewhere { side });
        }
        let words = shared.mem.words();
        // AcqRel: the lock already serialises claimers; Acquire orders whatever the previous
        // holder wrote before our own stores, Release publishes the bump to `side_state`.
        let incarnation = Incarnation(
            words[side.incarnation_word()]
                .fetch_add(1, Ordering::AcqRel)
                .wrapping_add(1),
        );
        // Relaxed: informational (see `side_state`).
        words[side.pid_word()].store(u64::from(std::process::id()), Ordering::Relaxed);
        Ok(Arc::new(Self {
            shared: Arc::clone(shared),
            side,
            incarnation,
        }))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let shared = &self.shared;
        // Relaxed: informational.
        shared.mem.words()[self.side.pid_word()].store(0, Ordering::Relaxed);
        // Failure needs a broken descriptor; the lock then goes with the mapping.
        let _ = shared.mem.unlock(self.side.lock_byte());
        shared.claimed[self.side as usize].store(false, Ordering::Release);
    }
}

/// A read-only view of a segment for metrics and liveness: ring depths and counters, stats
/// snapshots, each side's incarnation, pid and attachment. `Clone + Send + Sync`, so a
/// `/metrics` handler can hold one; it takes no claim.
#[derive(Clone)]
pub struct Observer {
    shared: Arc<Shared>,
}

impl Observer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The segment's shape.
    pub fn spec(&self) -> SegmentSpec {
        self.shared.layout.spec
    }

    /// What `side` last wrote about itself, and whether it is attached now.
    pub fn side(&self, side: Side) -> SideState {
        self.shared.side_state(side)
    }

    /// The control plane's last [`ControlEnd::heartbeat`](crate::ControlEnd::heartbeat)
    /// (0: never). The dataplane's are per core, in the stats snapshots.
    pub fn control_heartbeat(&self) -> UnixMs {
        // Relaxed: a gauge.
        self.shared.mem.words()[Side::Control.heartbeat_word()].load(Ordering::Relaxed)
    }

    /// Core `core`'s command ring (control → dataplane), or `None` past the last core.
    pub fn commands(&self, core: CoreId) -> Option<RingStatus> {
        (core.index() < self.shared.cores())
            .then(|| self.shared.command_ring(core.index()).status())
    }

    /// Core `core`'s event ring (dataplane → control), or `None` past the last core.
    pub fn events(&self, core: CoreId) -> Option<RingStatus> {
        (core.index() < self.shared.cores()).then(|| self.shared.event_ring(core.index()).status())
    }

    /// A consistent snapshot of core `core`'s stats block.
    pub fn stats(&self, core: CoreId) -> Result<Snapshot, StatsError> {
        if core.index() >= self.shared.cores() {
            return Err(StatsError::UnknownCore {
                core: core.0,
                cores: self.shared.layout.spec.cores,
            });
        }
        let snapshot = self.shared.stats_block(core.index()).read()?;
        Ok(snapshot)
    }
}

/// Writes a complete segment file under a temporary name and links it to `path`.
fn create_file(layout: &Layout, path: &Path) -> Result<Mem, CreateError> {
    let io = |source| CreateError::Io {
        path: path.to_owned(),
        source,
    };
    let temp = TempFile::new(path);
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp.path)
        .map_err(io)?;
    file.set_len(to_u64(layout.len)).map_err(io)?;
    let mem = Mem::map(file, layout.len).map_err(io)?;
    layout.write_header(mem.words());
    // A hard link, not a rename: it fails instead of replacing a segment someone uses.
    match fs::hard_link(&temp.path, path) {
        Ok(()) => Ok(mem),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Err(CreateError::Exists {
            path: path.to_owned(),
        }),
        Err(err) => Err(io(err)),
    }
}

/// A temporary name next to the target, removed on drop (the segment itself is reached
/// through the link, or through the mapping).
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn new(target: &Path) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut name = OsString::from(target.as_os_str());
        name.push(format!(".{}.{n}.tmp", std::process::id()));
        Self {
            path: PathBuf::from(name),
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Nothing to do if it is already gone (or was never created).
        let _ = fs::remove_file(&self.path);
    }
}
