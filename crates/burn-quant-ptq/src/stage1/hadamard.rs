//! ±1 Hadamard matrices of practical orders and the fast Walsh–Hadamard transform.
//!
//! A Hadamard matrix `H` of order `K` has entries ±1 and `H·Hᵀ = K·I`; `H/√K` is orthogonal.
//! The rotations of [`super::rotation`] use `H_K ⊗ H_P` with `P` a power of two (applied by the
//! FWHT in `O(P log P)`) and a small "seed" `K`, so a dimension `n` is covered when
//! `n = K·2^j` for a `K` built here:
//!
//! * **Sylvester**: every power of two, `H[i, j] = (−1)^popcount(i & j)` (symmetric);
//! * **Paley I**: `K = q + 1` for a prime power `q ≡ 3 (mod 4)` (skew: **not** symmetric);
//! * **Paley II**: `K = 2(q + 1)` for a prime power `q ≡ 1 (mod 4)` (symmetric);
//! * **Kronecker**: `K = a·b` for two orders built here.
//!
//! Prime powers `q = p^k` with `k > 1` use GF(p^k) arithmetic (polynomials over GF(p) modulo an
//! irreducible polynomial found by search), so for instance 28 (`q = 27`), 52 (`q = 25`) and
//! 344 (`q = 343`) are reachable. No table of Williamson-type matrices is shipped.
//!
//! # Coverage
//!
//! A Hadamard matrix can only exist for orders 1, 2 and multiples of 4, so odd `n > 1` and
//! `n ≡ 2 (mod 4)` (`n > 2`) are never covered. Among multiples of 4 up to 200 the orders this
//! module cannot build are **92, 116, 156, 172, 184 and 188** (they need Williamson-type
//! tables); a dimension `n = 4m·2^j` (m odd) is still covered when some larger seed `m·2^a`
//! is, which is how the common LLM widths resolve:
//!
//! | n | seed `K` | construction |
//! |---|---|---|
//! | 576 | 36 ⊗ H_16 | Paley II, q = 17 |
//! | 960 | 60 ⊗ H_16 | Paley I, q = 59 |
//! | 1536 | 12 ⊗ H_128 | Paley I, q = 11 |
//! | 2048, 8192 | 1 (pure Sylvester) | |
//! | 2560 | 20 ⊗ H_128 | Paley I, q = 19 |
//! | 4864 | 76 ⊗ H_64 | Paley II, q = 37 |
//! | 5632 | 44 ⊗ H_128 | Paley I, q = 43 |
//! | 9728 | 76 ⊗ H_128 | Paley II, q = 37 (smaller than the usual 152) |
//! | 11008 | **344** ⊗ H_32 | Paley I, q = 343 = 7³ (172 is not reachable here) |
//! | 14336 | 28 ⊗ H_512 | Paley I, q = 27 = 3³ |
//! | 18944 | 148 ⊗ H_128 | Paley II, q = 73 |
//!
//! Not covered, for example: 6, 7, 10, 92, 116, 156, 172, 184 and 188 (every seed `m·2^a ≤ n`
//! is out of reach), and all their odd multiples ≡ 2 (mod 4).

use std::collections::HashMap;

/// How a Hadamard matrix of a given order is built (see [`construction`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Construction {
    /// A power of two (including 1): `H[i, j] = (−1)^popcount(i & j)`.
    Sylvester,
    /// Order `q + 1`, `q ≡ 3 (mod 4)` a prime power; skew-Hadamard, not symmetric.
    PaleyI {
        /// The prime power `q`.
        q: usize,
    },
    /// Order `2(q + 1)`, `q ≡ 1 (mod 4)` a prime power; symmetric.
    PaleyII {
        /// The prime power `q`.
        q: usize,
    },
    /// `H_left ⊗ H_right` (index `i = a·right + b`), both orders built here.
    Kronecker {
        /// Order of the outer factor.
        left: usize,
        /// Order of the inner factor.
        right: usize,
    },
}

/// How this module builds a Hadamard matrix of order `order`, or `None` when it cannot.
///
/// Preference: Sylvester, then Paley I, then Paley II, then a Kronecker product of two
/// constructible orders (smallest left factor first).
pub fn construction(order: usize) -> Option<Construction> {
    construction_memo(order, &mut HashMap::new())
}

fn construction_memo(
    order: usize,
    memo: &mut HashMap<usize, Option<Construction>>,
) -> Option<Construction> {
    if order == 0 {
        return None;
    }
    if order.is_power_of_two() {
        return Some(Construction::Sylvester);
    }
    if !order.is_multiple_of(4) {
        return None;
    }
    if let Some(&c) = memo.get(&order) {
        return c;
    }
    // order ≡ 0 (mod 4), so q = order − 1 is ≡ 3 (mod 4) automatically.
    let found = if prime_power(order - 1).is_some() {
        Some(Construction::PaleyI { q: order - 1 })
    } else if (order / 2 - 1) % 4 == 1 && prime_power(order / 2 - 1).is_some() {
        Some(Construction::PaleyII { q: order / 2 - 1 })
    } else {
        let mut kron = None;
        let mut a = 2;
        while a * a <= order {
            if order.is_multiple_of(a)
                && construction_memo(a, memo).is_some()
                && construction_memo(order / a, memo).is_some()
            {
                kron = Some(Construction::Kronecker {
                    left: a,
                    right: order / a,
                });
                break;
            }
            a += 1;
        }
        kron
    };
    memo.insert(order, found);
    found
}

/// The ±1 Hadamard matrix of order `order` (row-major `order × order`), or `None` when
/// [`construction`] has no way to build it. Callers check `H·Hᵀ = order·I` in the tests.
pub fn hadamard_matrix(order: usize) -> Option<Vec<i8>> {
    Some(match construction(order)? {
        Construction::Sylvester => sylvester(order),
        Construction::PaleyI { q } => paley_one(q),
        Construction::PaleyII { q } => paley_two(q),
        Construction::Kronecker { left, right } => kronecker(
            &hadamard_matrix(left)?,
            left,
            &hadamard_matrix(right)?,
            right,
        ),
    })
}

/// Splits `n = K·2^j` with `K` the smallest order for which this module builds a Hadamard
/// matrix, and returns `(K, H_K)` with `H_K` row-major `K × K`, entries ±1.
///
/// `K = 1` (`H_1 = [1]`) for powers of two; otherwise `K = m·2^a` with `m` the odd part of `n`
/// and `a ≥ 2`, tried in increasing order. `None` when no such `K` divides `n` with a
/// power-of-two quotient: `n = 0`, odd `n > 1`, `n ≡ 2 (mod 4)`, and sizes such as 92, 184 or
/// 156 (see the module docs). The cost of using the seed is `O(n·K)` per vector, so the
/// smallest seed is also the cheapest.
pub fn hadamard_seed(n: usize) -> Option<(usize, Vec<i8>)> {
    if n == 0 {
        return None;
    }
    let twos = n.trailing_zeros();
    let odd = n >> twos;
    if odd == 1 {
        return Some((1, vec![1]));
    }
    let mut memo = HashMap::new();
    (2..=twos)
        .map(|a| odd << a)
        .find(|&k| construction_memo(k, &mut memo).is_some())
        .and_then(|k| Some((k, hadamard_matrix(k)?)))
}

/// In-place unnormalized fast Walsh–Hadamard transform, `x ← H_n·x` with `H_n` the Sylvester
/// matrix of order `n = x.len()` (symmetric, so this is also `x·H_n`), in `O(n log n)` adds.
/// Multiply by `1/√n` for the orthogonal version.
///
/// # Panics
/// If `x.len()` is not a power of two (an empty slice is left alone).
pub fn fwht(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    assert!(
        n.is_power_of_two(),
        "fwht needs a power-of-two length, got {n}"
    );
    let mut h = 1;
    while h < n {
        // Butterflies on (j, j + h) inside each block of 2h; the split keeps the inner loop
        // bounds-check free so it vectorizes once h reaches the SIMD width.
        for block in x.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (u, v) = (*a, *b);
                *a = u + v;
                *b = u - v;
            }
        }
        h *= 2;
    }
}

/// Sylvester matrix of a power-of-two order, row-major.
pub(crate) fn sylvester(order: usize) -> Vec<i8> {
    debug_assert!(order.is_power_of_two());
    let mut h = vec![0i8; order * order];
    for i in 0..order {
        for j in 0..order {
            h[i * order + j] = if (i & j).count_ones() % 2 == 0 { 1 } else { -1 };
        }
    }
    h
}

/// `A ⊗ B`, index `(i·b + j, k·b + l)` ↦ `A[i, k]·B[j, l]`.
fn kronecker(a: &[i8], na: usize, b: &[i8], nb: usize) -> Vec<i8> {
    let n = na * nb;
    let mut h = vec![0i8; n * n];
    for i in 0..na {
        for k in 0..na {
            let s = a[i * na + k];
            for j in 0..nb {
                for l in 0..nb {
                    h[(i * nb + j) * n + k * nb + l] = s * b[j * nb + l];
                }
            }
        }
    }
    h
}

/// `Some((p, k))` when `q = p^k` for a prime `p` and `k ≥ 1`.
fn prime_power(q: usize) -> Option<(usize, u32)> {
    if q < 2 {
        return None;
    }
    let mut p = 2;
    while p * p <= q && !q.is_multiple_of(p) {
        p += 1;
    }
    if !q.is_multiple_of(p) {
        p = q; // no factor up to √q: q is prime
    }
    let (mut r, mut k) = (q, 0);
    while r.is_multiple_of(p) {
        r /= p;
        k += 1;
    }
    (r == 1).then_some((p, k))
}

/// The finite field GF(p^k): an element is the integer whose base-p digits are the
/// coefficients (lowest degree first) of a polynomial of degree < k over GF(p), reduced modulo
/// a monic irreducible polynomial of degree k.
struct Gf {
    p: usize,
    k: usize,
    q: usize,
    /// Monic modulus, `k + 1` coefficients, lowest degree first (unused when `k = 1`).
    modulus: Vec<usize>,
}

impl Gf {
    fn new(q: usize) -> Option<Self> {
        let (p, k) = prime_power(q)?;
        let k = k as usize;
        let modulus = if k == 1 {
            vec![0, 1]
        } else {
            irreducible(p, k)
        };
        Some(Self { p, k, q, modulus })
    }

    fn digits(&self, mut x: usize) -> Vec<usize> {
        (0..self.k)
            .map(|_| {
                let d = x % self.p;
                x /= self.p;
                d
            })
            .collect()
    }

    fn compose(&self, d: &[usize]) -> usize {
        d.iter().rev().fold(0, |acc, &c| acc * self.p + c)
    }

    fn sub(&self, a: usize, b: usize) -> usize {
        if self.k == 1 {
            return (a + self.p - b) % self.p;
        }
        let (mut a, mut b, mut r, mut scale) = (a, b, 0, 1);
        for _ in 0..self.k {
            r += ((a % self.p + self.p - b % self.p) % self.p) * scale;
            a /= self.p;
            b /= self.p;
            scale *= self.p;
        }
        r
    }

    fn mul(&self, a: usize, b: usize) -> usize {
        if self.k == 1 {
            return a * b % self.p;
        }
        let (da, db) = (self.digits(a), self.digits(b));
        let mut prod = vec![0usize; 2 * self.k - 1];
        for (i, &x) in da.iter().enumerate() {
            for (j, &y) in db.iter().enumerate() {
                prod[i + j] = (prod[i + j] + x * y) % self.p;
            }
        }
        poly_reduce(&mut prod, &self.modulus, self.p);
        self.compose(&prod[..self.k])
    }

    /// The quadratic character as a table: `χ(0) = 0`, `+1` on nonzero squares, `−1` on
    /// non-squares.
    fn chi(&self) -> Vec<i8> {
        let mut chi = vec![-1i8; self.q];
        chi[0] = 0;
        for x in 1..self.q {
            chi[self.mul(x, x)] = 1;
        }
        chi
    }

    /// The Jacobsthal matrix `Q[a, b] = χ(a − b)`, row-major `q × q`.
    fn jacobsthal(&self) -> Vec<i8> {
        let chi = self.chi();
        let q = self.q;
        let mut m = vec![0i8; q * q];
        for a in 0..q {
            for b in 0..q {
                m[a * q + b] = chi[self.sub(a, b)];
            }
        }
        m
    }
}

/// Reduces `poly` (coefficients mod p, lowest first) in place modulo the monic `modulus`; the
/// remainder occupies the first `deg(modulus)` entries.
fn poly_reduce(poly: &mut [usize], modulus: &[usize], p: usize) {
    let k = modulus.len() - 1;
    for d in (k..poly.len()).rev() {
        let c = poly[d] % p;
        if c != 0 {
            for (i, &m) in modulus.iter().enumerate() {
                let t = &mut poly[d - k + i];
                *t = (*t + p - c * m % p) % p;
            }
        }
    }
}

/// The first monic irreducible polynomial of degree `k` over GF(p) in digit order, found by
/// trial division by every monic polynomial of degree `1..=k/2`.
fn irreducible(p: usize, k: usize) -> Vec<usize> {
    let count = p.pow(k as u32);
    for code in 0..count {
        let mut f: Vec<usize> = (0..k).map(|i| code / p.pow(i as u32) % p).collect();
        f.push(1);
        if f[0] == 0 {
            continue; // divisible by x
        }
        let reducible = (1..=k / 2).any(|d| {
            (0..p.pow(d as u32)).any(|gcode| {
                let mut g: Vec<usize> = (0..d).map(|i| gcode / p.pow(i as u32) % p).collect();
                g.push(1);
                let mut r = f.clone();
                poly_reduce(&mut r, &g, p);
                r[..d].iter().all(|&c| c == 0)
            })
        });
        if !reducible {
            return f;
        }
    }
    unreachable!("an irreducible polynomial of every degree exists over GF({p})")
}

/// Paley I: `H = I + S` with `S = [[0, 𝟙ᵀ], [−𝟙, Q]]`, order `q + 1`, `q ≡ 3 (mod 4)`.
fn paley_one(q: usize) -> Vec<i8> {
    debug_assert_eq!(q % 4, 3);
    let gf = Gf::new(q).expect("Paley I needs a prime power");
    let jac = gf.jacobsthal();
    let n = q + 1;
    let mut h = vec![0i8; n * n];
    h[0] = 1;
    for j in 1..n {
        h[j] = 1;
        h[j * n] = -1;
    }
    for a in 0..q {
        for b in 0..q {
            h[(a + 1) * n + b + 1] = jac[a * q + b] + i8::from(a == b);
        }
    }
    h
}

/// Paley II: the symmetric conference matrix `C = [[0, 𝟙ᵀ], [𝟙, Q]]` with every 0 replaced by
/// `[[1, −1], [−1, −1]]` and every ±1 by `±[[1, 1], [1, −1]]`; order `2(q + 1)`,
/// `q ≡ 1 (mod 4)`.
fn paley_two(q: usize) -> Vec<i8> {
    debug_assert_eq!(q % 4, 1);
    let gf = Gf::new(q).expect("Paley II needs a prime power");
    let jac = gf.jacobsthal();
    let c_n = q + 1;
    let c = |i: usize, j: usize| -> i8 {
        match (i, j) {
            (0, 0) => 0,
            (0, _) | (_, 0) => 1,
            (i, j) => jac[(i - 1) * q + j - 1],
        }
    };
    let n = 2 * c_n;
    let mut h = vec![0i8; n * n];
    for i in 0..c_n {
        for j in 0..c_n {
            let block: [[i8; 2]; 2] = match c(i, j) {
                0 => [[1, -1], [-1, -1]],
                s => [[s, s], [s, -s]],
            };
            for (di, row) in block.iter().enumerate() {
                for (dj, &v) in row.iter().enumerate() {
                    h[(2 * i + di) * n + 2 * j + dj] = v;
                }
            }
        }
    }
    h
}

#[cfg(test)]
mod tests;
