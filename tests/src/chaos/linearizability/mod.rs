//! A linearizability checker: the Wing–Gong search with Lowe's memoization, as in Porcupine.
//!
//! A history is a set of operations, each with an invocation time, a completion time (or none:
//! the client gave up, and the operation may take effect at any point after its invocation, or
//! never) and an observed output (or none: unknown). The history is linearizable when every
//! operation can be given a point between its invocation and completion such that executing the
//! operations one at a time in that order, on a sequential [`Model`], produces every observed
//! output.
//!
//! # How the search works
//! Invocations and completions become one list of events in time order. The search walks it
//! from the start: at an invocation it tries to *linearize* that operation now (the model must
//! accept its output in the current state); at a completion of an operation not linearized yet
//! it has gone too far and backtracks to the last choice. Each linearized operation is lifted
//! out of the list (and put back on backtracking, like dancing links). A cache of (set of
//! linearized operations, model state) pairs skips configurations already explored, which is
//! what makes histories of thousands of mostly-sequential operations fast.
//!
//! Operations without a completion time and without an output are *optional*: they never force
//! a backtrack, because "took effect after everything else" is always possible and equals "never
//! took effect" for every observation. Operations without a completion time but with a known
//! output (the harness learns it from the store) must be linearized somewhere after their
//! invocation. The search stops with success once every required operation is placed.
//!
//! # Layout
//! - [`check`]: the generic search over any [`Model`].
//! - [`kv`]: the key-value model of bully's commands, partitioned per key.

pub mod kv;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    fn init(&self) -> Self::State;

    /// The state after `input` when it can have produced `output` in `state` (`None` output:
    /// unknown, any result is acceptable); `None` when it cannot.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation of a history. Times are in any unit, from any origin, as long as all the
/// operations of one history share them.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation<I, O> {
    /// Who issued it (for reports only).
    pub client: usize,
    pub input: I,
    pub call: u64,
    /// `None`: never completed (timeout, crash): may take effect any time after `call`, or never.
    pub ret: Option<u64>,
    /// `None`: unknown.
    pub output: Option<O>,
}

impl<I, O> Operation<I, O> {
    /// Must this operation be placed in the linearization?
    fn required(&self) -> bool {
        self.ret.is_some() || self.output.is_some()
    }
}

/// Why a history is not linearizable, in terms of indexes into the checked operations.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure<S> {
    /// The longest linearization of a prefix the search found, in order.
    pub longest_prefix: Vec<usize>,
    /// The model state after that prefix.
    pub state: S,
    /// The operation whose completion the search could not get past from that prefix: no
    /// placement of it (and of the operations concurrent with it) explains its output.
    pub stuck_at: Option<usize>,
}

/// The result of [`check`].
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict<S> {
    Linearizable,
    NotLinearizable(Failure<S>),
    /// The search took more than its budget of steps; nothing is known.
    Inconclusive {
        steps: u64,
    },
}

impl<S> Verdict<S> {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Search steps a check may take before giving up (each step is one model call, and at most
/// one cache entry). Histories of a few thousand operations with a handful of clients need
/// well under a million.
pub const DEFAULT_BUDGET: u64 = 20_000_000;

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// The event list: node 0 is the head, nodes 1.. are invocations and completions in time
/// order. Removal and reinsertion in LIFO order keep it consistent (dancing links).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the operation, and whether the node is its invocation.
    node_op: Vec<(usize, bool)>,
    call_node: Vec<usize>,
    ret_node: Vec<Option<usize>>,
}

impl Events {
    fn new<I, O>(ops: &[Operation<I, O>]) -> Events {
        // (time, 0 = invocation / 1 = completion, op): at equal times invocations come first,
        // which treats touching operations as concurrent (the permissive choice).
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, 0, i));
            if op.required() {
                events.push((op.ret.unwrap_or(u64::MAX), 1, i));
            }
        }
        events.sort_unstable();
        let len = events.len() + 1;
        let mut list = Events {
            next: (1..=len).map(|n| if n == len { NIL } else { n }).collect(),
            prev: (0..len).map(|n| n.wrapping_sub(1)).collect(),
            node_op: Vec::with_capacity(len),
            call_node: vec![NIL; ops.len()],
            ret_node: vec![None; ops.len()],
        };
        list.prev[HEAD] = NIL;
        list.node_op.push((NIL, false));
        for (node, (_, kind, op)) in events.into_iter().enumerate() {
            let node = node + 1;
            list.node_op.push((op, kind == 0));
            if kind == 0 {
                list.call_node[op] = node;
            } else {
                list.ret_node[op] = Some(node);
            }
        }
        list
    }

    fn remove(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn restore(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }

    fn lift(&mut self, op: usize) {
        self.remove(self.call_node[op]);
        if let Some(ret) = self.ret_node[op] {
            self.remove(ret);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(ret) = self.ret_node[op] {
            self.restore(ret);
        }
        self.restore(self.call_node[op]);
    }
}

/// Is `ops` linearizable with respect to `model`? At most `budget` search steps.
pub fn check<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Verdict<M::State> {
    let mut events = Events::new(ops);
    let required: Vec<bool> = ops.iter().map(Operation::required).collect();
    let total_required = required.iter().filter(|r| **r).count();
    let mut done_required = 0;
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut cache: HashSet<(Box<[u64]>, M::State)> = HashSet::new();
    let mut state = model.init();
    // The operations linearized so far, with the state before each.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut best: Option<Failure<M::State>> = None;
    let mut steps = 0u64;
    let mut node = events.next[HEAD];
    loop {
        if done_required == total_required {
            return Verdict::Linearizable;
        }
        let at_call = node != NIL && events.node_op[node].1;
        if !at_call {
            // A completion of an operation not placed yet (or the end of the list): every
            // placement from here has been tried, so undo the last choice.
            let stuck_at = (node != NIL).then(|| events.node_op[node].0);
            if best
                .as_ref()
                .is_none_or(|b| stack.len() > b.longest_prefix.len())
            {
                best = Some(Failure {
                    longest_prefix: stack.iter().map(|(op, _)| *op).collect(),
                    state: state.clone(),
                    stuck_at,
                });
            }
            let Some((op, before)) = stack.pop() else {
                return Verdict::NotLinearizable(best.unwrap_or(Failure {
                    longest_prefix: Vec::new(),
                    state,
                    stuck_at,
                }));
            };
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            if required[op] {
                done_required -= 1;
            }
            events.unlift(op);
            node = events.next[events.call_node[op]];
            continue;
        }
        steps += 1;
        if steps > budget {
            return Verdict::Inconclusive { steps };
        }
        let op = events.node_op[node].0;
        if let Some(after) = model.step(&state, &ops[op].input, ops[op].output.as_ref()) {
            linearized[op / 64] |= 1 << (op % 64);
            if cache.insert((linearized.clone().into_boxed_slice(), after.clone())) {
                stack.push((op, std::mem::replace(&mut state, after)));
                if required[op] {
                    done_required += 1;
                }
                events.lift(op);
                node = events.next[HEAD];
                continue;
            }
            linearized[op / 64] &= !(1 << (op % 64));
        }
        node = events.next[node];
    }
}
