//! Linearizability of one key's history, checked with the Wing–Gong–Lowe
//! algorithm (Lowe, "Testing for linearizability", 2017): search for an
//! order of the operations that respects real time and in which every read
//! returns the latest write, backtracking when an operation's response comes
//! before it could be placed, and caching (linearized set, state) pairs
//! already explored so that the search is polynomial on typical histories.
//!
//! The model is a register whose value starts absent. A write whose client
//! never heard back (a timeout, a lost reply) may have taken effect at any
//! time after it was sent, or never: it has no response and the search may
//! place it anywhere after its call, or leave it out.

use std::collections::HashSet;

/// One operation on the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOp {
    /// A write of a value.
    Write(u64),
    /// A read that returned this value (`None`: absent).
    Read(Option<u64>),
}

/// An operation with its real-time interval. `call < ret`; `ret` is `None`
/// for a write whose outcome the client never learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timed {
    /// What was done.
    pub op: RegisterOp,
    /// When the client sent it.
    pub call: u64,
    /// When the client received its answer.
    pub ret: Option<u64>,
}

/// The search gives up after this many steps and reports the history as
/// unchecked rather than running on.
pub const CHECK_STEPS_MAX: u64 = 5_000_000;

/// Outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A legal order exists.
    Linearizable,
    /// None exists.
    NotLinearizable,
    /// The search took more than [`CHECK_STEPS_MAX`] steps.
    TooLong,
}

const NONE: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call: the position of its return, if any.
    ret_at: usize,
    prev: usize,
    next: usize,
}

/// Checks that the operations on one register are linearizable. Written
/// values must be unique.
#[must_use]
pub fn check_register(ops: &[Timed]) -> Verdict {
    // An unanswered write whose value no read returned can always be left
    // out: without it, every read still sees what it saw. Dropping those
    // first keeps the search from trying every subset of them (a history
    // with many timed-out writes would otherwise take exponential time).
    let read: std::collections::HashSet<u64> = ops
        .iter()
        .filter_map(|t| match t.op {
            RegisterOp::Read(v) => v,
            RegisterOp::Write(_) => None,
        })
        .collect();
    let kept: Vec<Timed> = ops
        .iter()
        .copied()
        .filter(|t| t.ret.is_some() || matches!(t.op, RegisterOp::Write(v) if read.contains(&v)))
        .collect();
    search(&kept)
}

fn search(ops: &[Timed]) -> Verdict {
    // Positions 0 is the head sentinel; events follow in time order.
    let mut order: Vec<(u64, usize, bool)> = Vec::with_capacity(ops.len() * 2);
    for (i, t) in ops.iter().enumerate() {
        order.push((t.call, i, true));
        if let Some(ret) = t.ret {
            assert!(ret > t.call, "an operation returns after its call");
            order.push((ret, i, false));
        }
    }
    order.sort_unstable();
    let mut events = vec![Event { op: NONE, is_call: false, ret_at: NONE, prev: NONE, next: NONE }];
    let mut ret_pos = vec![NONE; ops.len()];
    for (pos, &(_, op, is_call)) in order.iter().enumerate() {
        let at = pos + 1;
        events.push(Event { op, is_call, ret_at: NONE, prev: at - 1, next: NONE });
        if !is_call && let Some(slot) = ret_pos.get_mut(op) {
            *slot = at;
        }
    }
    let len = events.len();
    for (at, event) in events.iter_mut().enumerate() {
        event.next = if at + 1 < len { at + 1 } else { NONE };
        if event.is_call {
            event.ret_at = ret_pos.get(event.op).copied().unwrap_or(NONE);
        }
    }
    Search { ops, events, returns_left: ops.iter().filter(|t| t.ret.is_some()).count() }.run()
}

struct Search<'a> {
    ops: &'a [Timed],
    events: Vec<Event>,
    returns_left: usize,
}

impl Search<'_> {
    fn ev(&self, at: usize) -> Event {
        *self.events.get(at).expect("positions come from the list")
    }

    fn set_next(&mut self, at: usize, next: usize) {
        if let Some(e) = self.events.get_mut(at) {
            e.next = next;
        }
    }

    fn set_prev(&mut self, at: usize, prev: usize) {
        if let Some(e) = self.events.get_mut(at) {
            e.prev = prev;
        }
    }

    fn unlink(&mut self, at: usize) {
        let e = self.ev(at);
        self.set_next(e.prev, e.next);
        if e.next != NONE {
            self.set_prev(e.next, e.prev);
        }
    }

    fn relink(&mut self, at: usize) {
        let e = self.ev(at);
        self.set_next(e.prev, at);
        if e.next != NONE {
            self.set_prev(e.next, at);
        }
    }

    /// Removes a call and its return from the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.ev(call).ret_at;
        if ret != NONE {
            self.unlink(ret);
            self.returns_left -= 1;
        }
    }

    /// Undoes `lift` (in reverse order).
    fn unlift(&mut self, call: usize) {
        let ret = self.ev(call).ret_at;
        if ret != NONE {
            self.relink(ret);
            self.returns_left += 1;
        }
        self.relink(call);
    }

    fn apply(&self, state: Option<u64>, op: usize) -> Option<Option<u64>> {
        match self.ops.get(op)?.op {
            RegisterOp::Write(v) => Some(Some(v)),
            RegisterOp::Read(seen) => (seen == state).then_some(state),
        }
    }

    fn run(mut self) -> Verdict {
        let words = self.ops.len().div_ceil(64);
        let mut linearized = vec![0_u64; words];
        let mut cache: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
        let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
        let mut state: Option<u64> = None;
        let mut at = self.ev(0).next;
        let mut steps = 0_u64;
        loop {
            if self.returns_left == 0 {
                return Verdict::Linearizable;
            }
            steps += 1;
            if steps > CHECK_STEPS_MAX {
                return Verdict::TooLong;
            }
            let event = if at == NONE { None } else { Some(self.ev(at)) };
            match event {
                Some(e) if e.is_call => {
                    if let Some(next_state) = self.apply(state, e.op) {
                        let (word, bit) = (e.op / 64, 1_u64 << (e.op % 64));
                        if let Some(w) = linearized.get_mut(word) {
                            *w |= bit;
                        }
                        if cache.insert((linearized.clone(), next_state)) {
                            stack.push((at, state));
                            state = next_state;
                            self.lift(at);
                            at = self.ev(0).next;
                            continue;
                        }
                        if let Some(w) = linearized.get_mut(word) {
                            *w &= !bit;
                        }
                    }
                    at = e.next;
                }
                // A return whose call is not yet placed, or the end of the
                // list: backtrack.
                _ => {
                    let Some((call, previous)) = stack.pop() else { return Verdict::NotLinearizable };
                    let op = self.ev(call).op;
                    if let Some(w) = linearized.get_mut(op / 64) {
                        *w &= !(1_u64 << (op % 64));
                    }
                    state = previous;
                    self.unlift(call);
                    at = self.ev(call).next;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: u64, call: u64, ret: u64) -> Timed {
        Timed { op: RegisterOp::Write(v), call, ret: Some(ret) }
    }
    fn r(v: Option<u64>, call: u64, ret: u64) -> Timed {
        Timed { op: RegisterOp::Read(v), call, ret: Some(ret) }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [r(None, 1, 2), w(1, 3, 4), r(Some(1), 5, 6), w(2, 7, 8), r(Some(2), 9, 10)];
        assert_eq!(check_register(&h), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = [w(1, 1, 2), w(2, 3, 4), r(Some(1), 5, 6)];
        assert_eq!(check_register(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn concurrent_write_may_be_seen_either_way() {
        let h = [w(1, 1, 2), w(2, 3, 8), r(Some(1), 4, 5), r(Some(2), 6, 7), r(Some(2), 9, 10)];
        assert_eq!(check_register(&h), Verdict::Linearizable);
        let h = [w(1, 1, 2), w(2, 3, 8), r(Some(2), 4, 5), r(Some(1), 6, 7)];
        assert_eq!(check_register(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn unanswered_write_may_take_effect_late_or_never() {
        let pending = Timed { op: RegisterOp::Write(7), call: 1, ret: None };
        assert_eq!(check_register(&[pending, w(1, 2, 3), r(Some(1), 4, 5)]), Verdict::Linearizable);
        assert_eq!(check_register(&[pending, w(1, 2, 3), r(Some(7), 4, 5)]), Verdict::Linearizable);
        // Once a read saw 7 after 1, 1 cannot come back.
        let h = [pending, w(1, 2, 3), r(Some(7), 4, 5), r(Some(1), 6, 7)];
        assert_eq!(check_register(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn many_unanswered_writes_are_checked_quickly() {
        // Nineteen timed-out writes, one of them read: linearizable, and
        // found without trying every subset of the others.
        let mut h: Vec<Timed> = (1..=19).map(|v| Timed { op: RegisterOp::Write(v), call: v, ret: None }).collect();
        h.push(r(Some(2), 30, 31));
        assert_eq!(check_register(&h), Verdict::Linearizable);
        h.push(r(Some(99), 32, 33));
        assert_eq!(check_register(&h), Verdict::NotLinearizable);
    }

    #[test]
    fn read_of_a_value_never_written_is_caught() {
        assert_eq!(check_register(&[w(1, 1, 2), r(Some(9), 3, 4)]), Verdict::NotLinearizable);
    }
}
