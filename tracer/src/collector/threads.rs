//! Which threads ran each stack, by thread name: a server's JavaScript thread, its HTTP client, the
//! collector's helpers. Names, not thread ids, since ids mean nothing once the trace is shared and a pool's
//! threads come and go; a stack keeps a bit per name, so the cost per stack is one word whatever the run.

use std::{collections::HashMap, path::Path, sync::Arc};

use crate::procfs::untrusted::{self, Cap, Origin};

/// Names told apart; the 64th stands for every name after it.
const NAMES: usize = 64;
/// Thread ids remembered with their name's bit; past it the cache starts over (a server that makes threads
/// without end would otherwise grow it without end).
const MAX_THREADS: usize = 1 << 16;
/// A thread's name in /proc is at most 15 bytes and a newline.
const COMM_CAP: Cap = Cap(64);

#[derive(Default)]
pub struct ThreadNames {
    names: Vec<Arc<str>>,
    bit_of_thread: HashMap<u32, u64>,
    /// By stack index: the bits of the names of the threads that ran it.
    by_stack: Vec<u64>,
}

impl ThreadNames {
    /// Notes that thread `tid` of process `tgid` ran stack `stack`.
    pub fn note(&mut self, stack: u32, tgid: u32, tid: u32) {
        let bit = match self.bit_of_thread.get(&tid) {
            Some(bit) => *bit,
            None => {
                if self.bit_of_thread.len() >= MAX_THREADS {
                    self.bit_of_thread.clear();
                }
                let bit = self.bit_of(&comm(tgid, tid));
                self.bit_of_thread.insert(tid, bit);
                bit
            }
        };
        let index = stack as usize;
        if self.by_stack.len() <= index {
            self.by_stack.resize(index + 1, 0);
        }
        self.by_stack[index] |= bit;
    }

    /// A stack index was forgotten (and may be given to another stack).
    pub fn forget(&mut self, stack: u32) {
        if let Some(bits) = self.by_stack.get_mut(stack as usize) {
            *bits = 0;
        }
    }

    pub fn of_stack(&self, stack: u32) -> u64 {
        self.by_stack.get(stack as usize).copied().unwrap_or(0)
    }

    /// The names of the bits set in `bits`, in the order they were first seen.
    pub fn names(&self, bits: u64) -> Vec<&str> {
        (0..self.names.len()).filter(|i| bits & (1 << i) != 0).map(|i| &*self.names[i]).collect()
    }

    fn bit_of(&mut self, name: &str) -> u64 {
        let index = match self.names.iter().position(|known| &**known == name) {
            Some(index) => index,
            None if self.names.len() < NAMES - 1 => {
                self.names.push(Arc::from(name));
                self.names.len() - 1
            }
            None => {
                if self.names.len() < NAMES {
                    self.names.push(Arc::from("(other threads)"));
                }
                NAMES - 1
            }
        };
        1 << index
    }
}

/// The thread's name, or `?` once it has exited (a short-lived thread can be gone before its first event
/// is read).
fn comm(tgid: u32, tid: u32) -> String {
    let path = format!("/proc/{tgid}/task/{tid}/comm");
    match untrusted::read(Path::new(&path), Origin::Target, COMM_CAP) {
        Ok(bytes) => {
            let name = String::from_utf8_lossy(&bytes).trim_end_matches('\n').to_string();
            // A name is the target's to choose: keep it printable.
            let name: String = name.chars().filter(|c| !c.is_control()).take(16).collect();
            if name.is_empty() { "?".to_string() } else { name }
        }
        Err(_) => "?".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_keep_the_names_of_the_threads_that_ran_them() {
        let mut threads = ThreadNames::default();
        for (index, name) in ["bun", "HTTP Client", "bun"].iter().enumerate() {
            let bit = threads.bit_of(name);
            threads.bit_of_thread.insert(index as u32 + 1, bit);
        }
        threads.note(3, 0, 1);
        threads.note(3, 0, 2);
        threads.note(5, 0, 3);
        assert_eq!(threads.names(threads.of_stack(3)), ["bun", "HTTP Client"]);
        assert_eq!(threads.names(threads.of_stack(5)), ["bun"]);
        assert_eq!(threads.of_stack(4), 0);
        threads.forget(3);
        assert_eq!(threads.of_stack(3), 0);
    }

    #[test]
    fn names_past_the_sixty_third_are_other_threads() {
        let mut threads = ThreadNames::default();
        let bits: Vec<u64> = (0..70).map(|i| threads.bit_of(&format!("worker {i}"))).collect();
        assert_eq!(bits[62], 1 << 62);
        assert!(bits[63..].iter().all(|bit| *bit == 1 << 63));
        assert_eq!(threads.names(1 << 63), ["(other threads)"]);
    }

    #[test]
    fn a_thread_of_ours_is_named_from_proc() {
        let tid = unsafe { libc::gettid() } as u32;
        assert!(!comm(std::process::id(), tid).is_empty());
        assert_eq!(comm(std::process::id(), u32::MAX - 1), "?");
    }
}
