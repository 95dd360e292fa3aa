use super::*;
use crate::testutil::gaussian;

/// `H·Hᵀ == order·I` exactly, in integers.
fn assert_hadamard(h: &[i8], order: usize) {
    assert_eq!(h.len(), order * order, "order {order}: wrong length");
    assert!(
        h.iter().all(|&v| v == 1 || v == -1),
        "order {order}: entries must be ±1"
    );
    for i in 0..order {
        for j in i..order {
            let dot: i32 = (0..order)
                .map(|k| i32::from(h[i * order + k]) * i32::from(h[j * order + k]))
                .sum();
            let want = if i == j { order as i32 } else { 0 };
            assert_eq!(dot, want, "order {order}: (H·Hᵀ)[{i}, {j}]");
        }
    }
}

#[test]
fn every_constructible_order_up_to_256_is_hadamard() {
    let mut missing = Vec::new();
    for order in 1..=256 {
        match hadamard_matrix(order) {
            Some(h) => assert_hadamard(&h, order),
            None => {
                if order == 1 || order == 2 || order % 4 == 0 {
                    missing.push(order);
                }
                assert!(construction(order).is_none());
            }
        }
    }
    // The orders that need a Williamson-type table (not shipped).
    assert_eq!(missing, [92, 116, 156, 172, 184, 188, 232, 236]);
}

#[test]
fn named_orders_and_their_constructions() {
    use Construction::*;
    let cases = [
        (12, PaleyI { q: 11 }),
        (20, PaleyI { q: 19 }),
        (28, PaleyI { q: 27 }),
        (36, PaleyII { q: 17 }),
        (40, Kronecker { left: 2, right: 20 }),
        (44, PaleyI { q: 43 }),
        (52, PaleyII { q: 25 }),
        (60, PaleyI { q: 59 }),
        (76, PaleyII { q: 37 }),
        (108, PaleyI { q: 107 }),
        (140, PaleyI { q: 139 }),
        (148, PaleyII { q: 73 }),
        (152, PaleyI { q: 151 }),
        (64, Sylvester),
        (1, Sylvester),
    ];
    for (order, want) in cases {
        assert_eq!(construction(order), Some(want), "order {order}");
        assert_hadamard(&hadamard_matrix(order).unwrap(), order);
    }
    for order in [0, 3, 6, 10, 92, 156, 172] {
        assert_eq!(construction(order), None, "order {order}");
    }
}

#[test]
fn paley_over_prime_power_fields() {
    // q = p^k with k > 1 exercises the polynomial arithmetic; 243 = 3⁵ needs the degree-2
    // trial divisions of the irreducibility search.
    for q in [3, 7, 11, 19, 27, 243, 343] {
        assert_hadamard(&paley_one(q), q + 1);
    }
    for q in [5, 9, 13, 25, 49, 81, 121, 125] {
        assert_hadamard(&paley_two(q), 2 * (q + 1));
    }
}

#[test]
fn finite_field_is_a_field() {
    for q in [9, 25, 27, 81, 125] {
        let gf = Gf::new(q).unwrap();
        // Every nonzero element has an inverse, and multiplication commutes.
        for a in 1..q {
            assert!(
                (1..q).any(|b| gf.mul(a, b) == 1),
                "GF({q}): {a} has no inverse"
            );
            for b in 1..q {
                assert_eq!(gf.mul(a, b), gf.mul(b, a));
            }
        }
        // Exactly half of the nonzero elements are squares.
        let chi = gf.chi();
        assert_eq!(chi.iter().filter(|&&c| c == 1).count(), (q - 1) / 2);
    }
}

#[test]
fn paley_one_is_not_symmetric_paley_two_is() {
    let h = hadamard_matrix(12).unwrap();
    assert!((0..12).any(|i| (0..12).any(|j| h[i * 12 + j] != h[j * 12 + i])));
    // Skew-Hadamard: H + Hᵀ = 2I.
    for i in 0..12 {
        for j in 0..12 {
            let s = h[i * 12 + j] + h[j * 12 + i];
            assert_eq!(s, if i == j { 2 } else { 0 });
        }
    }
    let h = hadamard_matrix(36).unwrap();
    assert!((0..36).all(|i| (0..36).all(|j| h[i * 36 + j] == h[j * 36 + i])));
}

#[test]
fn sylvester_matches_its_recursion() {
    // H_2n = [[H_n, H_n], [H_n, −H_n]].
    for n in [1usize, 2, 4, 8, 16, 32] {
        let h = sylvester(n);
        let h2 = sylvester(2 * n);
        for i in 0..n {
            for j in 0..n {
                let v = h[i * n + j];
                assert_eq!(h2[i * 2 * n + j], v);
                assert_eq!(h2[i * 2 * n + n + j], v);
                assert_eq!(h2[(n + i) * 2 * n + j], v);
                assert_eq!(h2[(n + i) * 2 * n + n + j], -v);
            }
        }
    }
}

#[test]
fn fwht_equals_the_explicit_sylvester_product() {
    for log in 0..=10 {
        let n = 1usize << log;
        let x = gaussian(n, 7 + log as u64);
        let h = sylvester(n);
        let want: Vec<f64> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| f64::from(h[i * n + j]) * f64::from(x[j]))
                    .sum()
            })
            .collect();
        let mut y = x.clone();
        fwht(&mut y);
        let scale = want.iter().map(|v| v.abs()).fold(1.0, f64::max);
        for (a, b) in y.iter().zip(&want) {
            assert!(
                (f64::from(*a) - b).abs() <= 1e-5 * scale,
                "n = {n}: {a} vs {b}"
            );
        }
        // Applying it twice gives n·x.
        fwht(&mut y);
        for (a, b) in y.iter().zip(&x) {
            assert!((a / n as f32 - b).abs() <= 1e-5 * (1.0 + b.abs()));
        }
    }
    fwht(&mut []);
}

#[test]
#[should_panic(expected = "power-of-two")]
fn fwht_rejects_other_lengths() {
    fwht(&mut [1.0, 2.0, 3.0]);
}

#[test]
fn worked_sizes_resolve_to_the_smallest_seed() {
    let cases = [
        (576, 36),
        (960, 60),
        (1536, 12),
        (2048, 1),
        (2560, 20),
        (4864, 76),
        (5632, 44),
        (8192, 1),
        (9728, 76),
        (11008, 344),
        (14336, 28),
        (18944, 148),
        // More LLM widths: 13824 = 108·128, 17408 = 68·256, 28672 = 28·1024.
        (13824, 108),
        (17408, 68),
        (28672, 28),
        (3584, 28),
        (896, 28),
        (1, 1),
        (2, 1),
        (4, 1),
        (12, 12),
    ];
    for (n, want) in cases {
        let (k, h) = hadamard_seed(n).unwrap_or_else(|| panic!("{n} has no seed"));
        assert_eq!(k, want, "n = {n}");
        assert!((n / k).is_power_of_two() && n % k == 0);
        assert_hadamard(&h, k);
    }
}

#[test]
fn sizes_without_a_seed() {
    for n in [
        0,
        3,
        6,
        7,
        10,
        14,
        92,
        116,
        156,
        172,
        184,
        188,
        46 * 3,
        4097,
    ] {
        assert!(hadamard_seed(n).is_none(), "n = {n}");
    }
    // A larger seed rescues a size whose smallest candidate is out of reach.
    assert_eq!(hadamard_seed(368).map(|s| s.0), Some(368)); // 92 and 184 fail, 368 = 367 + 1
    assert_eq!(hadamard_seed(312).map(|s| s.0), Some(312)); // 156 fails, 312 = 311 + 1
}

#[test]
fn prime_powers() {
    assert_eq!(prime_power(343), Some((7, 3)));
    assert_eq!(prime_power(2), Some((2, 1)));
    assert_eq!(prime_power(97), Some((97, 1)));
    assert_eq!(prime_power(243), Some((3, 5)));
    for q in [0, 1, 6, 15, 171, 85, 155] {
        assert_eq!(prime_power(q), None, "q = {q}");
    }
}
