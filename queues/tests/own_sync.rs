//! Queues over synchronisation objects a binding brings (`QueueSync`):
//! in-process stand-ins here, one of which can be told to fail, as an
//! object of a lost node does.

mod common;

use common::deadline;
use queues::sync::{Condition, Lock, Semaphore};
use queues::{
    Fault, GetError, JoinableQueue, Mode, PutError, Queue, QueueChannel, QueueSync, ShmChannel, Tag, TaskDoneError,
    EXACT_MAX, MAX_ATTACHMENTS, SLOT_SIZE, UNBOUNDED_CAPACITY,
};
use shm_primitives::sync::local::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const NOW: Option<Duration> = Some(Duration::ZERO);

/// A semaphore of this process (shared by clones); `broken` makes every
/// call fail.
#[derive(Clone, Default)]
struct Sem(Arc<SemState>);

#[derive(Default)]
struct SemState {
    value: Mutex<u32>,
    cv: Condvar,
    broken: AtomicBool,
}

impl std::ops::Deref for Sem {
    type Target = SemState;
    fn deref(&self) -> &SemState {
        &self.0
    }
}

impl Sem {
    fn with(value: u32) -> Sem {
        Sem(Arc::new(SemState { value: Mutex::new(value), ..SemState::default() }))
    }

    fn check(&self) -> Result<(), Fault> {
        // Relaxed: set and read by the test's own thread.
        if self.broken.load(Ordering::Relaxed) {
            return Err(Fault::Other("the object's node is gone".into()));
        }
        Ok(())
    }
}

impl Semaphore for Sem {
    fn acquire(&self, timeout: Option<Duration>) -> Result<bool, Fault> {
        self.check()?;
        let end = timeout.map(|t| Instant::now() + t);
        let mut v = self.value.lock().unwrap();
        while *v == 0 {
            match end {
                None => v = self.cv.wait(v).unwrap(),
                Some(end) => {
                    let now = Instant::now();
                    if now >= end {
                        return Ok(false);
                    }
                    v = self.cv.wait_timeout(v, end - now).unwrap().0;
                }
            }
        }
        *v -= 1;
        Ok(true)
    }

    fn release(&self) -> Result<(), Fault> {
        self.check()?;
        *self.value.lock().unwrap() += 1;
        self.cv.notify_one();
        Ok(())
    }

    fn value(&self) -> Result<u32, Fault> {
        self.check()?;
        Ok(*self.value.lock().unwrap())
    }
}

/// A lock of this process: a semaphore of one.
struct OneLock(Sem);

impl Lock for OneLock {
    fn acquire(&self) -> Result<(), Fault> {
        Semaphore::acquire(&self.0, None).map(|_| ())
    }

    fn release(&self) -> Result<(), Fault> {
        Semaphore::release(&self.0)
    }
}

/// A condition of this process: a generation count.
#[derive(Default)]
struct Cond {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Condition<OneLock> for Cond {
    fn wait(&self, lock: &OneLock, timeout: Option<Duration>) -> Result<(), Fault> {
        let g = self.generation.lock().unwrap();
        let seen = *g;
        lock.release()?;
        let t = timeout.unwrap_or(Duration::from_secs(3600));
        let _g = self.cv.wait_timeout_while(g, t, |g| *g == seen).unwrap();
        drop(_g);
        lock.acquire()
    }

    fn notify_all(&self) -> Result<(), Fault> {
        *self.generation.lock().unwrap() += 1;
        self.cv.notify_all();
        Ok(())
    }
}

struct Local;

impl QueueSync for Local {
    type Semaphore = Sem;
    type Lock = OneLock;
    type Condition = Cond;
}

fn channel(capacity: u64) -> ShmChannel {
    let opts = channels_core::ChannelOptions::new()
        .capacity(capacity)
        .slot_size(SLOT_SIZE)
        .max_attachments(MAX_ATTACHMENTS)
        .roles(channels_core::Roles::BOTH);
    ShmChannel::create(&opts).unwrap()
}

#[test]
fn a_queue_bounded_by_a_semaphore_of_its_own_takes_and_gives_back_its_units() {
    let _g = deadline("own semaphore");
    let bound = EXACT_MAX + 2;
    let sem = Sem::with(bound as u32);
    let q: Queue<ShmChannel, Local> =
        Queue::from_channel(channel(UNBOUNDED_CAPACITY), bound, Some(sem.clone())).unwrap();
    assert_eq!(q.mode(), Mode::Semaphore);
    q.put(b"one", None).unwrap();
    q.put(b"two", None).unwrap();
    assert_eq!(sem.value().unwrap(), bound as u32 - 2);
    assert_eq!(q.qsize(), 2);
    assert_eq!(q.get(None).unwrap().payload(), b"one");
    assert_eq!(sem.value().unwrap(), bound as u32 - 1);

    // A semaphore that fails: the put fails with it and puts nothing.
    sem.broken.store(true, Ordering::Relaxed);
    assert!(matches!(q.put(b"three", None), Err(PutError::Sync(_))));
    // The item is taken and returned, though its unit cannot go back.
    assert_eq!(q.get(None).unwrap().payload(), b"two");
    sem.broken.store(false, Ordering::Relaxed);
    assert_eq!(q.get(NOW).unwrap_err(), GetError::Empty, "nothing more was put");

    // No unit left: a put waits for one, then fails as full.
    *sem.value.lock().unwrap() = 0;
    assert_eq!(q.put(b"four", Some(Duration::from_millis(5))), Err(PutError::Full));
    assert!(q.full());
}

#[test]
fn a_joinable_queue_counts_with_objects_of_its_own() {
    let _g = deadline("own task objects");
    let unfinished = Sem::with(0);
    let lock = OneLock(Sem::with(1));
    let q: Queue<ShmChannel, Local> = Queue::from_channel(channel(UNBOUNDED_CAPACITY), 0, None).unwrap();
    let q = Arc::new(JoinableQueue::from_parts(q, unfinished.clone(), Cond::default(), lock));
    for i in 0..20u32 {
        q.put(&i.to_le_bytes(), None).unwrap();
    }
    assert_eq!(q.unfinished(), 20);
    let worker = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || {
            for _ in 0..20 {
                q.get(None).unwrap();
                q.task_done().unwrap();
            }
        })
    };
    q.join().unwrap();
    assert_eq!(q.unfinished(), 0);
    worker.join().unwrap();
    assert_eq!(q.task_done(), Err(TaskDoneError::TooManyCalls));

    // A count that fails: the put is refused, join and task_done say why.
    unfinished.broken.store(true, Ordering::Relaxed);
    assert!(matches!(q.put(b"x", None), Err(PutError::Sync(_))));
    assert!(q.join().is_err());
    assert!(matches!(q.task_done(), Err(TaskDoneError::Sync(_))));
    unfinished.broken.store(false, Ordering::Relaxed);
    assert_eq!(q.get(NOW).unwrap_err(), GetError::Empty, "the refused put put nothing");
    assert_eq!(q.unfinished(), 0);
}

#[test]
fn a_failed_put_is_uncounted() {
    let _g = deadline("uncounted");
    let unfinished = Sem::with(0);
    let lock = OneLock(Sem::with(1));
    let q: Queue<ShmChannel, Local> = Queue::from_channel(channel(1), 1, None).unwrap();
    let q = JoinableQueue::from_parts(q, unfinished.clone(), Cond::default(), lock);
    q.put(b"fills it", None).unwrap();
    assert_eq!(q.put(b"no room", NOW), Err(PutError::Full));
    assert_eq!(q.unfinished(), 1, "only the item put is counted");
    assert!(!q.join_timeout(Some(Duration::from_millis(5))).unwrap());
}

#[test]
fn get_with_skips_control_messages_and_asks_with_the_time_left() {
    let _g = deadline("get_with");
    let q = Queue::new(0).unwrap();
    q.channel().send_parts(&[&[queues::wire::TAG_CONTROL], b"wake"], None).unwrap();
    q.put(b"item", None).unwrap();
    let mut calls = Vec::new();
    let got = q
        .get_with(Some(Duration::from_secs(60)), |chan, t| {
            calls.push(t);
            let m = chan.recv(t)?;
            let (tag, skip) = queues::wire::split(m.as_ref());
            Ok((tag, m.as_ref()[skip..].to_vec()))
        })
        .unwrap();
    assert_eq!(got, b"item");
    assert_eq!(calls.len(), 2, "the control message was skipped");
    assert!(calls.iter().all(|t| t.is_some_and(|t| t <= Duration::from_secs(60))));
    let none = q.get_with(NOW, |chan, t| chan.recv(t).map(|m| (Tag::Bytes, m)));
    assert_eq!(none.unwrap_err(), GetError::Empty);
}
