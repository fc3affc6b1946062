//! Free loopback ports for the processes a test starts.
//!
//! A child process binds its own ports, so the harness must pick numbers first: it binds
//! `127.0.0.1:PORT`, checks that works, and closes it again. Two races remain, and each has its
//! own guard:
//!
//! - within one test process, a port handed out is remembered and never handed out again;
//! - between test processes (nextest runs each test in its own), ports are drawn at random from
//!   a range below the kernel's ephemeral range (32768-60999 on Linux), so neither another
//!   test's picks nor the outgoing connections' ephemeral ports are likely to collide.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::Mutex;

use rand::Rng;

/// Lowest port drawn.
const LOW: u16 = 15_000;
/// One past the highest port drawn; below the Linux ephemeral range.
const HIGH: u16 = 32_700;

/// Ports already handed out in this process. A std mutex: held briefly, never across `.await`.
static USED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback port that was free a moment ago and that this process has not handed out before.
pub fn free_port() -> u16 {
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::thread_rng();
    for _ in 0..10_000 {
        let port = rng.gen_range(LOW..HIGH);
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("no free loopback port found in {LOW}..{HIGH}");
}

/// A base port `P` such that `P + o` is free for every offset `o` (for programs such as
/// `kvctl dev` that derive several ports from one).
pub fn free_port_block(offsets: &[u16]) -> u16 {
    let max = offsets.iter().copied().max().unwrap_or(0);
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::thread_rng();
    for _ in 0..10_000 {
        let base = rng.gen_range(LOW..HIGH - max);
        let ports: Vec<u16> = offsets.iter().map(|o| base + o).collect();
        if ports.iter().any(|p| used.contains(p)) {
            continue;
        }
        // Hold every listener until all are bound, so the check covers the whole block.
        let listeners: Result<Vec<_>, _> = ports
            .iter()
            .map(|&p| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)))
            .collect();
        if listeners.is_ok() {
            used.extend(ports);
            return base;
        }
    }
    panic!("no free block of loopback ports for offsets {offsets:?}");
}

/// `127.0.0.1:PORT` for a fresh free port.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_not_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| super::free_port()).collect();
        let unique: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| (super::LOW..super::HIGH).contains(p)));
    }

    #[test]
    fn port_blocks_do_not_overlap_single_ports() {
        let base = super::free_port_block(&[0, 1, 2, 100]);
        let single: Vec<u16> = (0..100).map(|_| super::free_port()).collect();
        for p in [base, base + 1, base + 2, base + 100] {
            assert!(!single.contains(&p));
        }
    }
}
