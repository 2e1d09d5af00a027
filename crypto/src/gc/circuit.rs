//! The circuit abstraction and its plaintext interpreters.

/// Something that can compute with boolean wires: XOR and NOT are free under
/// free-XOR garbling, AND costs two ciphertexts (half-gates).
pub trait Fancy {
    /// The interpreter's notion of a wire.
    type Item: Clone;

    /// a ⊕ b.
    fn xor(&mut self, a: &Self::Item, b: &Self::Item) -> Self::Item;
    /// a ∧ b.
    fn and(&mut self, a: &Self::Item, b: &Self::Item) -> Self::Item;
    /// ¬a.
    fn not(&mut self, a: &Self::Item) -> Self::Item;

    /// a ∨ b = a ⊕ b ⊕ (a ∧ b): one AND.
    fn or(&mut self, a: &Self::Item, b: &Self::Item) -> Self::Item {
        let x = self.xor(a, b);
        let y = self.and(a, b);
        self.xor(&x, &y)
    }

    /// The AND of all items (n − 1 ANDs, balanced tree). Panics on an empty slice.
    fn and_all(&mut self, xs: &[Self::Item]) -> Self::Item {
        assert!(!xs.is_empty(), "and_all of nothing");
        let mut layer: Vec<Self::Item> = xs.to_vec();
        while layer.len() > 1 {
            let mut next = Vec::with_capacity(layer.len().div_ceil(2));
            for pair in layer.chunks(2) {
                next.push(match pair {
                    [a, b] => self.and(a, b),
                    [a] => a.clone(),
                    _ => unreachable!(),
                });
            }
            layer = next;
        }
        layer.swap_remove(0)
    }

    /// The OR of all items (n − 1 ANDs).
    fn or_all(&mut self, xs: &[Self::Item]) -> Self::Item {
        let negated: Vec<Self::Item> = xs.iter().map(|x| self.not(x)).collect();
        let all = self.and_all(&negated);
        self.not(&all)
    }
}

/// Plaintext interpreter: wires are bits.
#[derive(Debug, Default)]
pub struct PlainEval;

impl Fancy for PlainEval {
    type Item = bool;
    fn xor(&mut self, a: &bool, b: &bool) -> bool {
        a ^ b
    }
    fn and(&mut self, a: &bool, b: &bool) -> bool {
        a & b
    }
    fn not(&mut self, a: &bool) -> bool {
        !a
    }
}

/// Gate-counting interpreter: no values, just totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GateCounter {
    /// AND gates (each costs two ciphertexts).
    pub ands: usize,
    /// XOR gates (free).
    pub xors: usize,
    /// NOT gates (free).
    pub nots: usize,
}

impl Fancy for GateCounter {
    type Item = ();
    fn xor(&mut self, _: &(), _: &()) {
        self.xors += 1;
    }
    fn and(&mut self, _: &(), _: &()) {
        self.ands += 1;
    }
    fn not(&mut self, _: &()) {
        self.nots += 1;
    }
}

/// One recorded gate; operands and result are wire indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// out = a ⊕ b.
    Xor(u32, u32, u32),
    /// out = a ∧ b.
    And(u32, u32, u32),
    /// out = ¬a.
    Not(u32, u32),
}

/// A recorded circuit. Wires `0..evaluator_inputs` are the evaluator's
/// inputs, the next `garbler_inputs` the garbler's; gates are in
/// topological order.
#[derive(Clone, Debug)]
pub struct Circuit {
    pub(crate) n_wires: usize,
    pub(crate) evaluator_inputs: usize,
    pub(crate) garbler_inputs: usize,
    pub(crate) gates: Vec<Gate>,
    pub(crate) outputs: Vec<u32>,
    pub(crate) n_and: usize,
}

impl Circuit {
    /// Records the circuit that `f` builds from the given input counts.
    pub fn record(
        evaluator_inputs: usize,
        garbler_inputs: usize,
        f: impl FnOnce(&mut Builder, &[u32], &[u32]) -> Vec<u32>,
    ) -> Circuit {
        let mut b = Builder { next: (evaluator_inputs + garbler_inputs) as u32, gates: Vec::new() };
        let ev: Vec<u32> = (0..evaluator_inputs as u32).collect();
        let ga: Vec<u32> =
            (evaluator_inputs as u32..(evaluator_inputs + garbler_inputs) as u32).collect();
        let outputs = f(&mut b, &ev, &ga);
        let n_and = b.gates.iter().filter(|g| matches!(g, Gate::And(..))).count();
        Circuit {
            n_wires: b.next as usize,
            evaluator_inputs,
            garbler_inputs,
            gates: b.gates,
            outputs,
            n_and,
        }
    }

    /// Number of evaluator input wires.
    pub fn evaluator_inputs(&self) -> usize {
        self.evaluator_inputs
    }

    /// Number of garbler input wires.
    pub fn garbler_inputs(&self) -> usize {
        self.garbler_inputs
    }

    /// Number of output wires.
    pub fn outputs(&self) -> usize {
        self.outputs.len()
    }

    /// Number of AND gates.
    pub fn and_gates(&self) -> usize {
        self.n_and
    }

    /// Number of wires.
    pub fn wires(&self) -> usize {
        self.n_wires
    }

    /// Evaluates the recorded gates on plaintext bits.
    pub fn eval_plain(&self, evaluator: &[bool], garbler: &[bool]) -> Vec<bool> {
        assert_eq!(evaluator.len(), self.evaluator_inputs);
        assert_eq!(garbler.len(), self.garbler_inputs);
        let mut w = vec![false; self.n_wires];
        w[..evaluator.len()].copy_from_slice(evaluator);
        w[evaluator.len()..evaluator.len() + garbler.len()].copy_from_slice(garbler);
        for g in &self.gates {
            match *g {
                Gate::Xor(a, b, o) => w[o as usize] = w[a as usize] ^ w[b as usize],
                Gate::And(a, b, o) => w[o as usize] = w[a as usize] & w[b as usize],
                Gate::Not(a, o) => w[o as usize] = !w[a as usize],
            }
        }
        self.outputs.iter().map(|&o| w[o as usize]).collect()
    }
}

/// Recording interpreter: wires are indices, gates are appended.
#[derive(Debug)]
pub struct Builder {
    next: u32,
    gates: Vec<Gate>,
}

impl Builder {
    fn fresh(&mut self) -> u32 {
        let w = self.next;
        self.next += 1;
        w
    }
}

impl Fancy for Builder {
    type Item = u32;
    fn xor(&mut self, a: &u32, b: &u32) -> u32 {
        let o = self.fresh();
        self.gates.push(Gate::Xor(*a, *b, o));
        o
    }
    fn and(&mut self, a: &u32, b: &u32) -> u32 {
        let o = self.fresh();
        self.gates.push(Gate::And(*a, *b, o));
        o
    }
    fn not(&mut self, a: &u32) -> u32 {
        let o = self.fresh();
        self.gates.push(Gate::Not(*a, o));
        o
    }
}
