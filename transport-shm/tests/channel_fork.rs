//! A process made by `fork` that inherits a `Channel` acts under an
//! attachment id of its own, and never gives back its parent's row.
//! (One test per binary: forking a process with other test threads running
//! could copy a held allocator lock into the child.)

use std::time::Duration;
use transport_shm::channel::{self, ChannelOptions};

fn fork_and_wait(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only uses the channel and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child();
        // SAFETY: leave without running the parent's destructors twice.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child did not exit normally: {status:#x}");
    libc::WEXITSTATUS(status)
}

#[test]
fn a_forked_child_attaches_under_its_own_id() {
    // A hang fails the test run.
    let _deadline = test_support::watchdog::guard("fork test", Duration::from_secs(60));
    let ch = channel::create(&ChannelOptions::new().capacity(8)).unwrap();
    let parent_id = ch.attachment_id();

    // The child uses the inherited channel, then drops it normally.
    let c = ch.clone();
    let code = fork_and_wait(move || {
        let ok = c.send(vec![1u8; 3000]).is_ok()
            && c.send(c.attachment_id().to_le_bytes()).is_ok()
            && c.attachment_id() != parent_id;
        drop(c);
        if ok {
            0
        } else {
            1
        }
    });
    assert_eq!(code, 0, "the child sent under its parent's id");
    assert_eq!(ch.recv().unwrap().len(), 3000);
    let child_id = u32::from_le_bytes(ch.recv().unwrap()[..4].try_into().unwrap());
    assert_ne!(child_id, parent_id);
    // The child exited holding its row (its copy of the parent's reference
    // kept the channel alive): recovery returns it, not the parent's.
    assert_eq!(ch.attachment_count(), 2);
    assert_eq!(ch.recover().unwrap().swept, 1);
    assert_eq!(ch.attachment_count(), 1);

    // A child that drops the last reference to an attachment it never used
    // must not give back its parent's row.
    let extra = ch.attach_again(channels_core::Roles::BOTH).unwrap();
    // SAFETY: the child only drops a channel and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        drop(extra);
        // SAFETY: leave without running destructors.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(ch.attachment_count(), 2, "the child freed its parent's row");
    extra.send(b"extra").unwrap();
    assert_eq!(&*ch.recv().unwrap(), b"extra");
    drop(extra);
    assert_eq!(ch.attachment_count(), 1);
    assert_eq!(ch.sender_count(), 1, "the parent's row is intact");
    ch.send(b"still mine").unwrap();
    assert_eq!(&*ch.recv().unwrap(), b"still mine");
    let st = ch.alloc_stats().unwrap();
    assert_eq!((st.owned, st.in_ring, st.free), (0, 0, st.blocks));
    ch.destroy();
}
