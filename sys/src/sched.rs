//! Scheduling of the calling thread.

use crate::{Error, Result};

/// Sets the calling thread's nice value (-20..19; below 0 needs CAP_SYS_NICE). On Linux a
/// thread has its own nice value, so this leaves the rest of the process alone.
pub fn set_thread_nice(nice: i32) -> Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority with PRIO_PROCESS and a thread id only changes that thread's nice
    // value; it takes no pointers.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc < 0 {
        return Err(Error::last_os(format!("setpriority (nice {nice})")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_nice_is_always_allowed() {
        std::thread::spawn(|| set_thread_nice(5).unwrap())
            .join()
            .unwrap();
    }
}
